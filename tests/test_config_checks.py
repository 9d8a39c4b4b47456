"""Configuration errors caught before any backbone runs: properties of params validation, the cut check."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from conftest import MOBILENET_025, tiny_params, write_params
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.backbones.cuts import check_cuts
from pipeline.config import (
    DataParams,
    EvaluateParams,
    ExtractParams,
    NearDuplicateParams,
    ParamsError,
    SplitRatios,
    load_params,
    parse_params,
)
from pipeline.heads.registry import DenseGrid
from pipeline.stages import check, prepare

SECTIONS = {
    section: {f.name for f in dataclasses.fields(cls)}
    for section, cls in {  # the keys each allows
        "data": DataParams,
        "data.split": SplitRatios,
        "data.near_duplicates": NearDuplicateParams,
        "extract": ExtractParams,
        "heads.dense": DenseGrid,
        "evaluate": EvaluateParams,
    }.items()
}
INTEGER_KEYS = [
    "data.seed",
    "data.small_image_side",
    "extract.batch_size",
    "heads.n_jobs",
    "evaluate.bootstrap",
    "synthetic.per_class",
    "data.near_duplicates.max_distance",
]


def _nest(keypath: str, value) -> dict:
    raw: dict = value
    for part in reversed(keypath.split(".")):
        raw = {part: raw}
    return raw


# --------------------------------------------------------------------------- params: properties


ratios = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
summing_to_one = st.tuples(st.floats(0, 1), st.floats(0, 1)).map(
    lambda cuts: (min(cuts), max(cuts) - min(cuts), 1 - max(cuts))
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.tuples(ratios, ratios, ratios), summing_to_one))
def test_split_ratios_are_accepted_exactly_when_valid(split):
    train, val, test = split
    valid = (
        all(0 <= r <= 1 for r in split) and math.isclose(train + val + test, 1, abs_tol=1e-6) and train > 0 and test > 0
    )
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
@given(
    st.sampled_from(INTEGER_KEYS),
    st.one_of(
        st.text(max_size=5),
        st.booleans(),
        st.floats(allow_nan=False).filter(lambda x: x != int(x) if math.isfinite(x) else True),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_a_non_integer_where_an_integer_belongs_is_named(keypath, value):
    with pytest.raises(ParamsError) as error:
        parse_params(_nest(keypath, value))
    assert keypath in str(error.value) and "Received" in str(error.value)


@pytest.mark.parametrize(
    "near, culprit",
    [
        ({"method": "cosine"}, "data.near_duplicates.method must be one of ['phash']. Received: 'cosine'"),
        ({"max_distance": 40}, "data.near_duplicates.max_distance must be an integer from 0 to 32"),
        ({"max_distance": -1}, "Received: -1"),
        ({"max_distanse": 4}, "unknown key 'data.near_duplicates.max_distanse'. Did you mean 'max_distance'?"),
        ("phash", "data.near_duplicates must be a mapping"),
    ],
)
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
    resolved = check_cuts(
        _features(
            a={"backbone": "mobilenet_v2", "cut": "block_1_add", "weights": "none"},
            b={"backbone": "mobilenet_v2", "weights": "none"},
        )
    )
    assert resolved["a"]["cut"] == "block_1_add" and resolved["a"]["cut_index"] == 2
    assert resolved["b"]["cut"] == "out_relu" and resolved["b"]["n_layers"] == 5  # cut: null is the last layer
    assert fake_layers == [("mobilenet_v2", None, None)]


def test_every_unknown_cut_is_named_with_the_nearest_layers(fake_layers):
    with pytest.raises(ParamsError) as error:
        check_cuts(
            _features(
                good={"backbone": "vgg16", "cut": "conv1"},
                typo={"backbone": "vgg16", "cut": "block_2_ad"},
                other={"backbone": "resnet50", "cut": "nothing_like_it"},
            )
        )
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
    features = {
        "a": {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_2_add", "size": 32},
        "b": {"backbone": "vgg16", "weights": "none", "size": 32},
    }
    raw = tiny_params("images")
    raw["features"] = features
    write_params(in_tmp / "params.yaml", raw)
    check.main(["--out", "checks"])
    assert sorted(p.name for p in (in_tmp / "checks").iterdir()) == ["a.json", "b.json"]
    assert json.loads((in_tmp / "checks/a.json").read_text()) == {
        "alpha": None,
        "backbone": "mobilenet_v2",
        "cut": "block_2_add",
        "cut_index": 3,
        "input_size": 32,
        "n_layers": 5,
        "weights": "none",
    }


def test_a_real_backbone_refuses_a_misspelled_cut_without_weights():
    # The real thing once: built with weights=None, no file read, no download.
    features = _features(
        mv2={"backbone": "mobilenet_v2", "weights": "imagenet", "cut": "block_2_ad", "size": 32, "alpha": 0.35}
    )
    with pytest.raises(
        ParamsError,
        match=r"features\.mv2\.cut: mobilenet_v2 has no layer 'block_2_ad'\. "
        r"Nearest: block_2_add",
    ):
        check_cuts(features)


# --------------------------------------------------------------------------- every value at load, with its key


@pytest.mark.parametrize(
    "keypath, value, expected",
    [
        ("data.seed", -1, "an integer from 0 to 4294967295"),
        ("heads.seed", -1, "an integer from 0 to 4294967295"),
        ("evaluate.seed", -1, "an integer from 0 to 4294967295"),
        ("extract.seed", -1, "an integer from 0 to 4294967295"),
        ("extract.augment.seed", -1, "an integer from 0 to 4294967295"),
        ("finetune.seed", -1, "an integer from 0 to 4294967295"),
        ("synthetic.seed", 2**32, "an integer from 0 to 4294967295"),
        ("evaluate.bootstrap", 0, "an integer >= 1"),
        ("evaluate.bootstrap", -5, "an integer >= 1"),
        ("heads.logreg.max_iter", 0, "an integer >= 1"),
        ("heads.dense.patience", -1, "an integer >= 0"),
        ("data.max_image_pixels", 0, "an integer from 1 to"),
        ("data.max_image_pixels", 10**9, "an integer from 1 to 178956970"),
    ],
)
def test_out_of_range_values_fail_at_load_naming_key_value_and_range(in_tmp, keypath, value, expected):
    section, *rest = keypath.split(".")
    raw = tiny_params("images", **{section: _nest(".".join(rest), value)})
    write_params(in_tmp / "params.yaml", raw)
    with pytest.raises(ParamsError) as error:
        load_params(in_tmp / "params.yaml")
    assert f"{keypath} must be {expected}" in str(error.value) and f"Received: {value!r}" in str(error.value)


@pytest.mark.parametrize(
    "weights, hint",
    [
        ("Imagenet", "(did you mean 'imagenet'?)"),
        ("NONE", "(did you mean 'none'?)"),
        ("imagenett", "which is not a file"),
    ],
)
def test_misspelled_weights_name_the_feature_set(in_tmp, weights, hint):
    raw = tiny_params("images")
    raw["features"]["mv2"]["weights"] = weights
    write_params(in_tmp / "params.yaml", raw)
    with pytest.raises(ParamsError) as error:
        load_params(in_tmp / "params.yaml")
    assert "features.mv2: weights must be 'imagenet', 'none' or a path" in str(error.value)
    assert hint in str(error.value)


@pytest.mark.parametrize("features", [{}, None, "missing"])
def test_no_feature_sets_fail_at_load_and_the_heads_stage_deletes_nothing(in_tmp, features):
    from pipeline.stages import heads

    raw = tiny_params("images")
    if features == "missing":
        del raw["features"]
    else:
        raw["features"] = features
    write_params(in_tmp / "params.yaml", raw)
    kept = in_tmp / "heads" / "mv2" / "avg-logreg-C0.1.joblib"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"a fitted head")
    (kept.parent / "scores.json").write_text("{}")
    with pytest.raises(ParamsError, match="features"):
        heads.main(["--features", "features", "--out", "heads", "--no-progress"])
    assert kept.read_bytes() == b"a fitted head" and (kept.parent / "scores.json").is_file()


# --------------------------------------------------------------------------- weights, before any extraction


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache ($KERAS_HOME, as Keras read it when imported)."""
    import keras.src.backend.config

    home = tmp_path / "keras-home"
    home.mkdir()
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(home))
    return home


def test_the_check_stage_stops_when_imagenet_weights_cannot_be_had_naming_the_offline_ways(in_tmp, keras_home, caplog):
    from pipeline.cli.stage_runner import run_stage

    raw = tiny_params("images")
    raw["features"] = {
        "mnet": {"backbone": "mobilenet", "alpha": 0.25, "weights": "imagenet", "size": 128},
        "mv2": raw["features"]["mv2"],
    }
    write_params(in_tmp / "params.yaml", raw)
    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: check.main(["--out", "checks"]), debug=False)
    assert exit_.value.code == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "1 feature set(s) have no weights to extract with" in message and "features.mnet.weights" in message
    assert f"copy mobilenet_2_5_128_tf_no_top.h5 into {keras_home / 'models'}" in message
    assert "weights: /path/to/mobilenet_2_5_128_tf_no_top.h5" in message and "features.mv2" not in message
    assert not (in_tmp / "checks").exists()  # no extract stage can start


@pytest.mark.real_weights
@pytest.mark.skipif(not MOBILENET_025.is_file(), reason="needs ../shared/keras-models")
def test_imagenet_weights_in_the_keras_cache_or_at_a_path_pass_the_check(keras_home):
    from pipeline.backbones.weights import weights_sources

    (keras_home / "models").mkdir()
    (keras_home / "models" / MOBILENET_025.name).symlink_to(MOBILENET_025)
    sources = weights_sources(
        _features(
            cached={"backbone": "mobilenet", "alpha": 0.25, "size": 224},
            path={"backbone": "mobilenet", "alpha": 0.25, "weights": str(MOBILENET_025)},
            random={"backbone": "mobilenet", "alpha": 0.25, "weights": "none"},
        )
    )
    assert sources["cached"].describe() == f"keras cache: {keras_home / 'models' / MOBILENET_025.name}"
    assert sources["path"].describe() == f"file: {MOBILENET_025}" and sources["random"].kind == "random"


# --------------------------------------------------------------------------- params_check: before DVC deletes anything


def _gate(root, *extra):
    from pipeline.stages import params_check

    params_check.main(["--synthetic", "data/synthetic", "--out", "reports/params_check.json", *extra])
    return (root / "reports/params_check.json").read_bytes()


def test_params_check_refuses_a_bad_value_naming_it_and_writes_nothing(in_tmp, image_folder):
    write_params(in_tmp / "params.yaml", tiny_params("images", data={"split": {"train": 0.6, "val": 1.5, "test": 0.2}}))
    with pytest.raises(ParamsError, match=r"data\.split\.val must be between 0 and 1\. Received: val=1\.5"):
        _gate(in_tmp)
    assert not (in_tmp / "reports/params_check.json").exists()


def test_params_check_writes_the_same_bytes_for_any_valid_values(in_tmp, image_folder):
    # Its file is a dependency of every first stage: bytes that followed the values would rerun them all.
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    first = _gate(in_tmp)
    write_params(
        in_tmp / "params.yaml", tiny_params("images", heads={"seed": 7}, data={"seed": 3}, extract={"batch_size": 8})
    )
    assert _gate(in_tmp) == first


def test_params_check_refuses_a_data_source_that_does_not_exist_but_not_the_synthetic_folder(in_tmp):
    write_params(in_tmp / "params.yaml", tiny_params("imgs"))
    with pytest.raises(
        ParamsError,
        match=r"data\.source must name a folder of images or a CSV file .*"
        r"Received: 'imgs', which does not exist",
    ):
        _gate(in_tmp)
    write_params(in_tmp / "params.yaml", tiny_params("data/synthetic"))  # written by synthesize, after this stage
    assert _gate(in_tmp) == b'{"params": "valid"}\n'


def test_params_check_names_every_path_dvc_cannot_hash_in_one_line(in_tmp, image_folder):
    import os

    from pipeline.stages.params_check import names_dvc_cannot_hash

    (image_folder / "class_0" / os.fsdecode(b"\xff\xfe.jpg")).write_bytes(b"x")
    (image_folder / "class_1" / os.fsdecode(b".hidden\xe9")).write_bytes(b"x")  # DVC hashes hidden files too
    bad_folder = image_folder / os.fsdecode(b"caf\xe9")
    bad_folder.mkdir()
    (bad_folder / os.fsdecode(b"\xff.png")).write_bytes(b"x")  # the folder is the one to rename
    (image_folder / "class_2" / "gone.png").symlink_to("nowhere.png")
    (image_folder / "class_2" / "loop.png").symlink_to("loop.png")
    (image_folder / "class_2" / "fine.png").symlink_to("img_000.png")
    (image_folder / "linked").symlink_to("class_1")
    problems = names_dvc_cannot_hash(image_folder)
    assert problems == sorted(
        [
            r"b'caf\xe9': the name is not valid UTF-8; rename it",
            r"b'class_0/\xff\xfe.jpg': the name is not valid UTF-8; rename it",
            r"b'class_1/.hidden\xe9': the name is not valid UTF-8; rename it",
            "class_2/gone.png: a symbolic link to nowhere.png, which does not exist (or a link loop); remove it or "
            "restore its target",
            "class_2/loop.png: a symbolic link to loop.png, which does not exist (or a link loop); remove it or "
            "restore its target",
        ]
    )
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    with pytest.raises(ValueError) as error:
        _gate(in_tmp)
    message = str(error.value)
    assert "\n" not in message and message.startswith("data.source images: 5 path(s) DVC cannot hash: ")
    assert r"b'class_0/\xff\xfe.jpg': the name is not valid UTF-8; rename it" in message
    assert message.endswith("(rename or remove them, then `dvc repro`)")


def test_params_check_names_a_few_paths_and_counts_the_rest(in_tmp, image_folder):
    import os

    for i in range(8):
        (image_folder / "class_0" / os.fsdecode(b"%d\xff.jpg" % i)).write_bytes(b"x")
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    with pytest.raises(ValueError, match=r"8 path\(s\) DVC cannot hash: .*4\\xff.jpg.* and 3 more \(rename") as error:
        _gate(in_tmp)
    assert r"5\xff.jpg" not in str(error.value)
