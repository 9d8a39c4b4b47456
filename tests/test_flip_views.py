"""Flip averaging (``flip: average``) and the input size of a feature set: stored rows, store identity, export.

A ``flip: average`` store must hold, for each image, the mean of the backbone's
map of the image and of its mirror image's map mirrored back, computed here by
running the backbone directly; the flip and the input size must be part of the
store identity (changing either never serves old rows); and the exported model
must compute the same averaged features (the export stage's own equivalence
check, and the graph's ``features`` layer against the store).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import zarr
from conftest import tiny_params, write_image_folder, write_params

from pipeline.config import ExtractParams, FeatureSetParams, ParamsError, parse_params
from pipeline.extraction.feature_sets import extract_feature_set
from pipeline.extraction.plan import planned_identity
from pipeline.images import decode_image
from pipeline.manifest import images_by_hash, read_manifest
from pipeline.stages import evaluate, export, extract, prepare
from pipeline.stages import heads as heads_stage

# EfficientNet-Lite0 with random weights, cut at an 8×8 map at 64 px: small, and a real map to mirror.
LITE = {"backbone": "efficientnet_lite0", "weights": "none", "cut": "block3b_add", "size": 64}
SETTINGS = ExtractParams(runtime="tensorflow", precision="float32", batch_size=4, dtype="float32", chunk_mb=0.01)


@pytest.fixture
def prepared(in_tmp):
    write_image_folder(in_tmp / "images", classes=2, per_class=5, size=(40, 56))
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    images = images_by_hash(read_manifest("data/manifest.csv"))
    return sorted(images), {h: r.path for h, r in images.items()}


def _extract(spec: FeatureSetParams, hashes, paths, out: str, settings: ExtractParams = SETTINGS):
    expected = planned_identity(spec, settings, spec.cut)
    return extract_feature_set(spec, settings, hashes, paths, out=out, progress=False, expected=expected)


def _rows(store: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    n = group.attrs["rows"]
    return dict(zip(group["sha256"][:n], np.asarray(group["X"][:n], np.float32)))


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_a_flip_averaged_row_is_the_mean_of_the_maps_of_the_image_and_its_mirror_mirrored_back(prepared, runtime):
    from pipeline.backbones import build_cut_model
    from pipeline.extraction.inputs import image_batches

    hashes, paths = prepared
    spec = FeatureSetParams(**LITE, flip="average")
    _extract(spec, hashes, paths, "flip.zarr", dataclasses.replace(SETTINGS, runtime=runtime))
    stored = _rows("flip.zarr")
    # The backbone run directly, without the flip, on the pixels extraction feeds it.
    cut = build_cut_model(dataclasses.replace(spec, flip="none"), seed=SETTINGS.seed)
    images = np.concatenate(list(image_batches([paths[h] for h in hashes], size=64, batch_size=4)))

    def f(x):
        return np.asarray(cut.model(cut.preprocess(x), training=False), np.float32)

    plain, of_mirror = f(images), f(images[:, :, ::-1].copy())
    expected = (plain + of_mirror[:, :, ::-1]) / 2
    got = np.stack([stored[h] for h in hashes])
    assert got.shape == expected.shape == (len(hashes), 8, 8, 40)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale)
    # Neither the plain map nor the mirror's map (mirrored back or not) would pass: the average is what is stored.
    for wrong in (plain, of_mirror[:, :, ::-1], (plain + of_mirror) / 2):
        assert np.abs(got - wrong).max() > 1e-2 * scale


def test_flip_and_input_size_are_part_of_the_store_identity(prepared):
    hashes, paths = prepared
    plain = FeatureSetParams(**LITE)
    flipped = dataclasses.replace(plain, flip="average")
    larger = dataclasses.replace(plain, size=96)
    identities = [planned_identity(s, SETTINGS, s.cut) for s in (plain, flipped, larger)]
    assert "flip" not in identities[0]  # stores made before flip averaging keep their identity
    assert identities[1]["flip"] == "average" and identities[2]["input_size"] == 96
    assert len({json.dumps(i, sort_keys=True) for i in identities}) == 3
    first = _extract(plain, hashes, paths, "store.zarr")
    assert first.computed == len(hashes)
    assert _extract(plain, hashes, paths, "store.zarr").reused == len(hashes)
    # Another flip or size in the same place: every row is computed again, none of the old ones is served.
    for spec, shape in ((flipped, (8, 8, 40)), (larger, (12, 12, 40))):
        result = _extract(spec, hashes, paths, "store.zarr")
        assert (result.reused, result.computed) == (0, len(hashes))
        group = zarr.open_group("store.zarr", mode="r")
        assert group.attrs["identity"] == planned_identity(spec, SETTINGS, spec.cut)
        assert group["X"].shape[1:] == shape


def test_flip_is_refused_where_it_cannot_hold():
    base = tiny_params("images")
    with pytest.raises(ParamsError, match=r"flip must be one of \['none', 'average'\]"):
        parse_params({**base, "features": {"a": {**LITE, "flip": "both"}}})
    with pytest.raises(ParamsError, match="fine-tuning does not support"):
        parse_params({**base, "features": {"a": {**LITE, "flip": "average"}}, "finetune": {"feature_set": "a"}})
    from pipeline.backbones import validate_feature_set

    with pytest.raises(ValueError, match="flip: average mirrors maps back"):
        validate_feature_set(FeatureSetParams(backbone="hub", preset="some/preset", flip="average"))


@pytest.mark.slow
def test_the_exported_model_computes_the_flip_averaged_features(in_tmp):
    from pipeline.export.predict_command import load_model

    write_image_folder(in_tmp / "images", classes=3, per_class=8, size=(40, 56))
    heads = {"kinds": ["logreg"], "logreg": {"C": [1.0]}, "n_jobs": 1}
    params = tiny_params("images", heads=heads, features={"lite": {**LITE, "flip": "average"}})
    params["heads"]["ensemble"] = 0
    write_params(in_tmp / "params.yaml", params)
    prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
    extract.main(["--feature-set", "lite", "--out", "features/lite.zarr", "--no-progress"])
    heads_stage.main(["--features", "features/lite.zarr", "--out", "heads/lite", "--no-progress"])
    reports = ["--metrics", "metrics.json", "--report", "reports/evaluation.json", "--leaderboard", "reports/lb.csv"]
    evaluate.main(["--heads", "heads", *reports, "--plots", "plots", "--export-target", "reports/target.json"])
    # The stage checks the exported model against the cached-feature head on every test image (it raises if not).
    export.main(
        ["--target", "reports/target.json", "--manifest", "data/manifest.csv"]
        + ["--prepare-report", "reports/prepare.json", "--out", "models/lite"]
    )
    check = json.loads((in_tmp / "models/lite/card.json").read_text())["check_against_pipeline"]
    assert check["same_class"] == check["images"] > 0
    # The graph's features layer gives the store's pooled (flip-averaged) rows, not the plain image's.
    from pipeline.store.reader import open_feature_set

    predictor = load_model(in_tmp / "models/lite")
    assert {"mirror_image", "mirror_back", "flip_average"} <= {layer.name for layer in _all_layers(predictor.model)}
    test = open_feature_set("features/lite.zarr", "test", manifest="data/manifest.csv", pooling="avg")
    by_id = {r.id: r for r in read_manifest("data/manifest.csv")}
    _, features = predictor._run("scored", [decode_image(by_id[i].path) for i in test.ids], 10**9)
    stored = np.asarray(test.X, np.float32)
    np.testing.assert_allclose(features, stored, atol=2e-3 * np.abs(stored).max())


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
