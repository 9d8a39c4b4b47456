"""Configuration errors caught before any backbone runs: properties of params validation, the cut check."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_params, write_params
from pipeline.backbones.cuts import check_cuts
from pipeline.config import (DataParams, EvaluateParams, ExtractParams, NearDuplicateParams, ParamsError, SplitRatios,
                             parse_params)
from pipeline.heads.registry import DenseGrid
from pipeline.stages import check, prepare

SECTIONS = {section: {f.name for f in dataclasses.fields(cls)} for section, cls in {  # the keys each allows
    "data": DataParams, "data.split": SplitRatios, "data.near_duplicates": NearDuplicateParams,
    "extract": ExtractParams, "heads.dense": DenseGrid, "evaluate": EvaluateParams}.items()}
INTEGER_KEYS = ["data.seed", "data.small_image_side", "extract.batch_size", "heads.n_jobs", "evaluate.bootstrap",
                "synthetic.per_class", "data.near_duplicates.max_distance"]


def _nest(keypath: str, value) -> dict:
    raw: dict = value
    for part in reversed(keypath.split(".")):
        raw = {part: raw}
    return raw


# --------------------------------------------------------------------------- params: properties


ratios = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
summing_to_one = st.tuples(st.floats(0, 1), st.floats(0, 1)).map(
    lambda cuts: (min(cuts), max(cuts) - min(cuts), 1 - max(cuts)))


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.tuples(ratios, ratios, ratios), summing_to_one))
def test_split_ratios_are_accepted_exactly_when_valid(split):
    train, val, test = split
    valid = (all(0 <= r <= 1 for r in split) and math.isclose(train + val + test, 1, abs_tol=1e-6)
             and train > 0 and test > 0)
    raw = {"data": {"split": {"train": train, "val": val, "test": test}}}
    if valid:
        assert parse_params(raw).data.split.train == train
    else:
        with pytest.raises(ParamsError, match=r"data\.split"):
            parse_params(raw)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(SECTIONS)), st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True))
def test_any_unknown_key_is_named_with_its_path(section, key):
    if key in SECTIONS[section]:
        return
    raw = _nest(f"{section}.{key}", 1)
    if section == "data.near_duplicates":
        raw["data"]["near_duplicates"]["method"] = "phash"
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert f"unknown key '{section}.{key}'" in str(error.value)
    assert "Allowed: " + ", ".join(sorted(SECTIONS[section])) in str(error.value)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(INTEGER_KEYS),
       st.one_of(st.text(max_size=5), st.booleans(), st.floats(allow_nan=False).filter(lambda x: x != int(x)
                                                                                        if math.isfinite(x) else True),
                 st.lists(st.integers(), max_size=2)))
def test_a_non_integer_where_an_integer_belongs_is_named(keypath, value):
    with pytest.raises(ParamsError) as error:
        parse_params(_nest(keypath, value))
    assert keypath in str(error.value) and "Received" in str(error.value)


@pytest.mark.parametrize("near, culprit", [
    ({"method": "cosine"}, "data.near_duplicates.method must be one of ['phash']. Received: 'cosine'"),
    ({"max_distance": 40}, "data.near_duplicates.max_distance must be an integer from 0 to 32"),
    ({"max_distance": -1}, "Received: -1"),
    ({"max_distanse": 4}, "unknown key 'data.near_duplicates.max_distanse'. Did you mean 'max_distance'?"),
    ("phash", "data.near_duplicates must be a mapping"),
])
def test_bad_near_duplicate_params_are_named(near, culprit):
    with pytest.raises(ParamsError) as error:
        parse_params({"data": {"near_duplicates": near}})
    assert culprit in str(error.value)


def test_near_duplicates_are_off_by_default_and_take_defaults_when_on():
    assert parse_params({}).data.near_duplicates is None
    near = parse_params({"data": {"near_duplicates": {}}}).data.near_duplicates
    assert (near.method, near.max_distance) == ("phash", 6)


def test_small_image_side_must_be_positive():
    with pytest.raises(ParamsError, match=r"data\.small_image_side must be an integer >= 1\. Received: 0"):
        parse_params({"data": {"small_image_side": 0}})


def test_a_dataset_path_that_does_not_exist_is_named(in_tmp):
    write_params(in_tmp / "params.yaml", tiny_params("no/such/folder"))
    with pytest.raises(FileNotFoundError, match="data.source 'no/such/folder' is not a folder"):
        prepare.main(["--manifest", "m.csv", "--report", "r.json", "--no-progress"])
    assert not (in_tmp / "m.csv").exists()


# --------------------------------------------------------------------------- cuts, before any backbone runs


@pytest.fixture
def fake_layers(monkeypatch):
    """Layer names without TensorFlow; counts how often a backbone is built."""
    import pipeline.backbones.cuts

    builds = []

    from pipeline.backbones import CutPoints

    def cut_points(spec):
        builds.append((spec.backbone, spec.size, spec.alpha))
        if spec.size == 33:
            raise ValueError("Input size must be at least 34x34; Received: input_shape=(33, 33, 3)")
        return CutPoints(names=("input_layer", "conv1", "block_1_add", "block_2_add", "out_relu"), last="out_relu")

    monkeypatch.setattr(pipeline.backbones.cuts, "cut_points", cut_points)
    return builds


def _features(**specs):
    return parse_params({"features": specs}).features


def test_cuts_resolve_and_each_backbone_is_built_once(fake_layers):
    resolved = check_cuts(_features(a={"backbone": "mobilenet_v2", "cut": "block_1_add", "weights": "none"},
                                          b={"backbone": "mobilenet_v2", "weights": "none"}))
    assert resolved["a"]["cut"] == "block_1_add" and resolved["a"]["cut_index"] == 2
    assert resolved["b"]["cut"] == "out_relu" and resolved["b"]["n_layers"] == 5  # cut: null is the last layer
    assert fake_layers == [("mobilenet_v2", None, None)]


def test_every_unknown_cut_is_named_with_the_nearest_layers(fake_layers):
    with pytest.raises(ParamsError) as error:
        check_cuts(_features(good={"backbone": "vgg16", "cut": "conv1"},
                                   typo={"backbone": "vgg16", "cut": "block_2_ad"},
                                   other={"backbone": "resnet50", "cut": "nothing_like_it"}))
    message = str(error.value)
    assert message.startswith("2 feature set(s) cannot be extracted")
    assert "features.typo.cut: vgg16 has no layer 'block_2_ad'. Nearest: block_2_add" in message
    assert "features.other.cut: resnet50 has no layer 'nothing_like_it'" in message
    assert "`shoulders layers vgg16` lists all 5" in message and "features.good" not in message


def test_a_backbone_that_cannot_take_the_size_is_named(fake_layers):
    with pytest.raises(ParamsError, match=r"features\.odd: vgg16 cannot be built at size=33: Input size must"):
        check_cuts(_features(odd={"backbone": "vgg16", "size": 33}))


def test_check_stage_writes_one_file_per_feature_set(in_tmp, fake_layers):
    (in_tmp / "checks").mkdir()
    (in_tmp / "checks" / "removed.json").write_text("{}")
    features = {"a": {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_2_add", "size": 32},
                "b": {"backbone": "vgg16", "weights": "none", "size": 32}}
    raw = tiny_params("images")
    raw["features"] = features
    write_params(in_tmp / "params.yaml", raw)
    check.main(["--out", "checks"])
    assert sorted(p.name for p in (in_tmp / "checks").iterdir()) == ["a.json", "b.json"]
    assert json.loads((in_tmp / "checks/a.json").read_text()) == {
        "alpha": None, "backbone": "mobilenet_v2", "cut": "block_2_add", "cut_index": 3, "input_size": 32,
        "n_layers": 5, "weights": "none"}


def test_a_real_backbone_refuses_a_misspelled_cut_without_weights():
    # The real thing once: built with weights=None, no file read, no download.
    features = _features(mv2={"backbone": "mobilenet_v2", "weights": "imagenet", "cut": "block_2_ad",
                              "size": 32, "alpha": 0.35})
    with pytest.raises(ParamsError, match=r"features\.mv2\.cut: mobilenet_v2 has no layer 'block_2_ad'\. "
                                          r"Nearest: block_2_add"):
        check_cuts(features)
