"""Augmented views in the cache: seeded, growable, resumable, and never on val/test unless TTA."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import recomputed_best_test_accuracy, tiny_params, write_image_folder, write_params

from pipeline.config import load_params
from pipeline.manifest import read_manifest
from pipeline.stages import augment, extract, prepare
from pipeline.store.layout import StoreError
from pipeline.store.reader import open_feature_set, open_views

AUG = {
    "views": 2,
    "seed": 7,
    "ops": {"flip": "horizontal", "rotation": 0.1, "zoom": 0.2, "translation": 0.1, "contrast": 0.3},
}


@pytest.fixture
def prepared(in_tmp):
    write_image_folder(in_tmp / "images", classes=2, per_class=8)
    write_params(
        in_tmp / "params.yaml", tiny_params("images", extract={"batch_size": 4, "chunk_mb": 0.004, "augment": AUG})
    )
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    return in_tmp


def _run(out: str, **augment_overrides) -> int:
    """The augment engine on the prepared dataset; returns the image × view passes it computed."""
    from dataclasses import replace

    from pipeline.extraction.feature_sets import augment_feature_set
    from pipeline.extraction.wanted import paths_of, view_images

    params = load_params()
    settings = params.extract
    if augment_overrides:
        settings = replace(settings, augment=replace(settings.augment, **augment_overrides))
    records = read_manifest("data/manifest.csv")
    wanted = view_images(records, tta=settings.augment.tta)
    return augment_feature_set(
        params.features["mv2"], settings, wanted, paths_of(records, wanted, where="test"), out=out, progress=False
    ).computed


def _X(path) -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")["X"][...], np.float32)


def test_views_are_deterministic_by_seed_and_really_augmented(prepared):
    _run("a.zarr")
    _run("b.zarr")
    _run("c.zarr", seed=8)
    a, b, c = (_X(p) for p in ("a.zarr", "b.zarr", "c.zarr"))
    assert a.shape[1] == 2
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:, 0], a[:, 1])  # two views of an image differ


def test_a_view_depends_on_the_image_not_on_its_neighbours(prepared):
    # Views of the same image computed among other images (another dataset around it) are the same.
    from pipeline.extraction.feature_sets import augment_feature_set
    from pipeline.extraction.wanted import paths_of

    params = load_params()
    records = read_manifest("data/manifest.csv")
    train = sorted({r.sha256 for r in records if r.split == "train"})
    paths = paths_of(records, train, where="test")
    augment_feature_set(params.features["mv2"], params.extract, train, paths, out="all.zarr", progress=False)
    augment_feature_set(params.features["mv2"], params.extract, train[1::2], paths, out="some.zarr", progress=False)
    full, part = zarr.open_group("all.zarr", mode="r"), zarr.open_group("some.zarr", mode="r")
    rows = {h: i for i, h in enumerate(full["sha256"][...].tolist())}
    for j, h in enumerate(part["sha256"][...].tolist()):
        np.testing.assert_array_equal(part["X"][j], full["X"][rows[h]])


def test_growing_views_computes_only_the_new_ones(prepared):
    n_train = len({r.sha256 for r in read_manifest("data/manifest.csv") if r.split == "train"})
    assert _run("v.zarr", views=1) == n_train
    view0 = sorted((p, p.stat().st_mtime_ns) for p in (prepared / "v.zarr/X/c").rglob("*") if p.is_file())
    assert _run("v.zarr", views=3) == 2 * n_train  # views 1 and 2 only
    after = {p: p.stat().st_mtime_ns for p in (prepared / "v.zarr/X/c").rglob("*") if p.is_file()}
    assert all(after[p] == mtime for p, mtime in view0)  # view 0's chunks untouched
    assert _run("v.zarr", views=3) == 0  # nothing left to do
    _run("fresh.zarr", views=3)
    np.testing.assert_array_equal(_X("v.zarr"), _X("fresh.zarr"))


def test_other_ops_start_a_new_store(prepared):
    _run("v.zarr", views=1)
    before = _X("v.zarr")
    assert _run("v.zarr", views=1, ops={"flip": "vertical"}) == before.shape[0]
    assert not np.array_equal(before, _X("v.zarr"))


def test_no_views_of_val_or_test_unless_tta(prepared):
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    clean_before = open_feature_set("features/mv2.zarr", "test", pooling="none").X
    _run("v.zarr")
    with pytest.raises(ValueError, match="tta: true"):
        open_views("v.zarr", "test")
    n_train = len({r.sha256 for r in read_manifest("data/manifest.csv") if r.split == "train"})
    assert zarr.open_group("v.zarr", mode="r").attrs["rows"] == n_train
    np.testing.assert_array_equal(open_feature_set("features/mv2.zarr", "test", pooling="none").X, clean_before)
    _run("tta.zarr", tta=True)
    test_views = open_views("tta.zarr", "test", pooling="avg")
    assert test_views.X.shape[:2] == (len(clean_before), 2)


def test_pooled_views(prepared):
    _run("v.zarr")
    train = open_views("v.zarr", "train", pooling="avg")
    clean_shape = open_views("v.zarr", "train", pooling="none").X.shape
    assert train.X.shape == (clean_shape[0], 2, clean_shape[-1])
    with pytest.raises(StoreError, match="is a views store"):
        open_feature_set("v.zarr", "train")


def test_augment_stage_with_no_views_builds_no_backbone(prepared):
    import subprocess
    import sys

    write_params(prepared / "params.yaml", tiny_params("images", extract={"augment": {"views": 0}}))
    code = (
        "import sys; from pipeline.stages import augment; "
        "augment.main(['--feature-set', 'mv2', '--out', 'features/views/mv2.zarr', '--no-progress']); "
        "print('tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr
    group = zarr.open_group("features/views/mv2.zarr", mode="r")
    assert group.attrs["views"] == 0 and "X" not in group
    with pytest.raises(ValueError, match="no augmented views: set extract.augment.views > 0"):
        open_views("features/views/mv2.zarr", "train")


def test_heads_train_on_views_and_score_with_tta(prepared):
    import json

    import joblib

    from pipeline.heads.variants import predict_views
    from pipeline.stages import evaluate
    from pipeline.stages import heads as heads_stage

    write_params(
        prepared / "params.yaml",
        tiny_params(
            "images",
            extract={"batch_size": 4, "chunk_mb": 0.004, "augment": {**AUG, "tta": True}},
            heads={
                "kinds": ["logreg", "dense"],
                "n_jobs": 1,
                "logreg": {"C": [1.0]},
                "dense": {"hidden_units": [8], "dropout": [0.0], "weight_decay": [0.0], "epochs": [4]},
                "augment": ["none", "stack", "draw"],
                "tta": [False, True],
            },
        ),
    )
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    augment.main(["--feature-set", "mv2", "--out", "features/views/mv2.zarr", "--no-progress"])
    heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
    scores = json.loads((prepared / "heads/mv2/scores.json").read_text())
    ids = {row["variant"]: row for row in scores["variants"]}
    assert {
        "avg-logreg-C1",
        "avg-logreg-C1-aug",
        "avg-logreg-C1-tta",
        "avg-dense-h8-d0-wd0-lr0.001-e4-augdraw",
        "avg-dense-h8-d0-wd0-lr0.001-e4-augdraw-tta",
    } <= set(ids)
    assert not any(i.startswith("avg-logreg") and "augdraw" in i for i in ids)  # draw is for dense heads
    # Without TTA, validation is scored on the clean features only.
    val = open_feature_set("features/mv2.zarr", "val", pooling="avg")
    head = joblib.load(prepared / "heads/mv2/avg-logreg-C1-aug.joblib")
    assert ids["avg-logreg-C1-aug"]["val_accuracy"] == pytest.approx(float((head.predict(val.X) == val.y).mean()))
    # With TTA, over the clean features and the views.
    val_views = open_views("features/views/mv2.zarr", "val", pooling="avg").X
    tta = predict_views(head, np.concatenate([val.X[:, None], val_views], axis=1))
    assert ids["avg-logreg-C1-aug-tta"]["val_accuracy"] == pytest.approx(float((tta == val.y).mean()))
    # The stacked variant was fitted on every training image once clean and once per view.
    n_train = len(open_feature_set("features/mv2.zarr", "train", pooling="avg").y)
    assert head[0].n_samples_seen_ == n_train * (1 + AUG["views"])
    evaluate.main(
        [
            "--heads",
            "heads",
            "--metrics",
            "metrics.json",
            "--report",
            "reports/evaluation.json",
            "--leaderboard",
            "reports/leaderboard.csv",
            "--plots",
            "plots",
        ]
    )
    assert json.loads((prepared / "metrics.json").read_text())["test_acc"] == recomputed_best_test_accuracy(prepared)
