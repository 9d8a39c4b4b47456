"""params.yaml loading: strict keys, types and values, with messages that name the culprit."""

from __future__ import annotations

import pytest
from conftest import REPO, tiny_params, write_params

from pipeline.config import FeatureSetParams, ParamsError, load_params, parse_params


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.features, "the default params must define at least one feature set"
    assert params.data.source == "data/synthetic"


def test_missing_sections_take_defaults():
    params = parse_params({})
    assert params.data.split.train == pytest.approx(0.7)
    assert params.extract.dtype == "float16"


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(AttributeError):
        params.data.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw, culprit",
    [
        ({"dat": {}}, "'dat'"),  # misspelled section
        ({"heads": {"dense": {"dropuot": [0.5]}}}, "heads.dense.dropuot"),  # misspelled key
        ({"extract": {"batch_size": "32"}}, "extract.batch_size"),  # wrong type
        ({"extract": {"batch_size": True}}, "extract.batch_size"),  # a bool is not an int
        ({"extract": {"dtype": "float8"}}, "float8"),  # not a choice
        ({"heads": {"pooling": ["median"]}}, "median"),
        ({"heads": {"kinds": ["svm"]}}, "'svm'"),
        ({"data": {"split": {"train": 0.8, "val": 0.2, "test": 0.2}}}, "sum"),
        ({"data": {"bad_images": "ignore"}}, "data.bad_images"),
        ({"heads": {"dense": {"dropout": [1.5]}}}, "heads.dense.dropout"),
        ({"heads": {"svm_rbf": {"gamma": ["wide"]}}}, "wide"),
        ({"features": {"x": {"weights": "imagenet"}}}, "features.x.backbone"),  # required key
        ({"features": {"bad key!": {"backbone": "vgg16"}}}, "bad key!"),
    ],
)
def test_bad_params_name_the_culprit(raw, culprit):
    with pytest.raises(ParamsError, match=None) as error:
        parse_params(raw)
    assert culprit in str(error.value)


def test_unknown_key_suggests_the_nearest_and_lists_allowed():
    with pytest.raises(ParamsError) as error:
        parse_params({"heads": {"dense": {"dropuot": [0.5]}}})
    message = str(error.value)
    assert "Did you mean 'dropout'" in message
    assert "hidden_units" in message  # the allowed keys are listed


def test_scalar_is_accepted_where_a_list_is_swept():
    params = parse_params({"heads": {"logreg": {"C": 0.5}}})
    assert params.heads.logreg.C == (0.5,)


def test_unknown_backbone_is_caught_when_loading(tmp_path):
    path = write_params(tmp_path / "params.yaml", tiny_params("src", features={"a": {"backbone": "resnet5O"}}))
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert "resnet5O" in str(error.value) and "resnet50" in str(error.value)
    assert str(error.value).index("resnet50") < str(error.value).index("vgg16")  # nearest first


@pytest.mark.parametrize(
    "spec, culprit",
    [
        ({"backbone": "inception_v3", "size": 64}, "size=64"),
        ({"backbone": "vgg16", "alpha": 0.5}, "alpha=0.5"),
        ({"backbone": "mobilenet", "alpha": 0.3}, "alpha=0.3"),
        ({"backbone": "vgg16", "weights": "missing/file.h5"}, "missing/file.h5"),
    ],
)
def test_bad_feature_sets_are_caught_when_loading(tmp_path, spec, culprit):
    path = write_params(tmp_path / "params.yaml", tiny_params("src", features={"a": spec}))
    with pytest.raises((ParamsError, FileNotFoundError)) as error:
        load_params(path)
    assert culprit in str(error.value)


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_params(tmp_path / "nowhere.yaml")


def test_feature_set_fields():
    spec = parse_params({"features": {"a": {"backbone": "vgg16"}}}).features["a"]
    assert spec == FeatureSetParams(backbone="vgg16", weights="imagenet", cut=None, size=None, alpha=None, dtype=None)
