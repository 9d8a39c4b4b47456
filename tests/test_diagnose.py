"""The diagnose stage: predictions, error gallery, label issues, learning curves and maps from the cached features."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import MOBILENET_025, SIGNS, run_to_evaluate, tiny_params, write_image_folder, write_params
from PIL import Image

from pipeline.diagnosis.learning_curve import curve_sizes, extrapolation, learning_curve
from pipeline.heads.saved import load_head
from pipeline.manifest import read_manifest
from pipeline.stages import diagnose
from pipeline.store.reader import open_feature_set

DIAGNOSE_ARGS = [
    "--chosen",
    "reports/chosen_heads.json",
    "--out",
    "reports/diagnose",
    "--errors",
    "reports/errors.md",
    "--label-issues",
    "reports/label_issues.md",
    "--learning-curve",
    "reports/learning_curve.md",
]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def evaluated(in_tmp):
    """A tiny project run up to evaluate: 3 classes × 12 images, one random-weights backbone, linear heads."""
    write_image_folder(in_tmp / "images", classes=3, per_class=12)
    write_params(
        in_tmp / "params.yaml",
        tiny_params(
            "images",
            heads={"kinds": ["logreg", "svm_linear"]},
            diagnose={"curve_per_class": [1, 2, 5], "curve_draws": 2, "label_folds": 3, "thumb_px": 40},
        ),
    )
    return run_to_evaluate(in_tmp)


def test_diagnose_writes_predictions_pictures_label_issues_curves_and_maps(evaluated):
    diagnose.main(DIAGNOSE_ARGS)
    out = evaluated / "reports/diagnose"
    records = read_manifest("data/manifest.csv")
    chosen = json.loads((evaluated / "reports/evaluation.json").read_text())["best"]
    scores = json.loads((evaluated / "heads/mv2/scores.json").read_text())
    row = next(r for r in scores["variants"] if r["variant"] == chosen["variant"])
    head = load_head(evaluated / "heads/mv2", row)

    # Predictions: every val and test image once, the head's own classes, probabilities that sum to 1.
    predictions = _rows(out / "predictions.csv")
    assert sorted(p["id"] for p in predictions) == sorted(r.id for r in records if r.split in ("val", "test"))
    classes = ["class_0", "class_1", "class_2"]
    for split in ("val", "test"):
        fs = open_feature_set("features/mv2.zarr", split, pooling="avg")
        expected = dict(zip(fs.ids, (classes[i] for i in head.predict(np.asarray(fs.X)))))
        mine = [p for p in predictions if p["split"] == split]
        assert {p["id"]: p["predicted"] for p in mine} == expected
        assert all(p["out_of_fold"] == "False" for p in mine)  # selected on the val split: fitted on train
        for p in mine:
            probabilities = [float(p[f"p_{c}"]) for c in classes]
            assert sum(probabilities) == pytest.approx(1, abs=2e-4)
            assert classes[int(np.argmax(probabilities))] == p["predicted"]
            assert float(p["confidence"]) == pytest.approx(max(probabilities))
            assert p["path"] == next(r.path for r in records if r.id == p["id"])
    wrong = [p for p in predictions if p["correct"] == "False"]
    test = [p for p in predictions if p["split"] == "test"]
    assert sum(p["correct"] == "True" for p in test) / len(test) == pytest.approx(chosen["test_accuracy"])

    # errors.md: every misclassified image with a thumbnail that exists, linked relative to the page.
    errors = (evaluated / "reports/errors.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", errors)
    assert links and all((evaluated / "reports" / link).is_file() for link in links)
    assert all(not Path(link).is_absolute() for link in links)
    for p in wrong:
        assert f"| {p['id']} |" in errors
    thumbs = sorted((out / "thumbs").glob("*.jpg"))
    assert thumbs
    for thumb in thumbs:
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= 40
    for sheet in ("errors.jpg", "least_confident.jpg", "label_issues.jpg"):
        with Image.open(out / sheet) as image:
            assert image.format == "JPEG" and image.width >= 420

    # Label issues: every train and val image ranked once, lowest label quality first.
    ranked = _rows(out / "label_issues.csv")
    assert sorted(r["id"] for r in ranked) == sorted(r.id for r in records if r.split in ("train", "val"))
    quality = [float(r["quality"]) for r in ranked]
    assert quality == sorted(quality) and all(0 <= q <= 1 for q in quality)
    issues = (evaluated / "reports/label_issues.md").read_text()
    assert "never changed" in issues
    assert all((evaluated / "reports" / link).is_file() for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", issues))

    # Learning curve: 1, 2, 5 and all (here 7 or 8 training images per class), scored on validation only:
    # refitted on every training image, the head scores what the heads stage measured on the val split.
    curve = _rows(out / "learning_curve.csv")
    train_per_class = np.bincount([r.label for r in records if r.split == "train"]).max()
    assert [int(r["per_class"]) for r in curve] == [1, 2, 5, train_per_class]
    assert [int(r["draws"]) for r in curve] == [2, 2, 2, 1]
    assert float(curve[-1]["accuracy"]) == pytest.approx(row["val_accuracy"])
    assert all(float(r["low"]) <= float(r["accuracy"]) <= float(r["high"]) for r in curve)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learning_curve_evaluated_on"] == "the validation split"
    page = (evaluated / "reports/learning_curve.md").read_text()
    assert summary["learning_curve"]["mv2"]["sentence"] in page
    assert "| per class | accuracy | low | high | fits |" in page and "`diagnose.curve_draws` random draws" in page
    # The leaderboard (written by evaluate, before diagnose runs) says the same sentence, computed the same way.
    leaderboard = (evaluated / "reports/leaderboard.md").read_text()
    assert (
        f"**Would more labelled images help?** For mv2 / {row['variant']}, "
        f"{summary['learning_curve']['mv2']['sentence']} (scored on the validation split;" in leaderboard
    )

    # The map: every image of the manifest once per feature set, the errors marked.
    points = _rows(out / "map.csv")
    assert sorted(p["id"] for p in points) == sorted(r.id for r in records)
    marked = {p["id"] for p in points if p["status"] == "misclassified"}
    flagged = {r["id"] for r in ranked if r["flagged"] == "True"}
    assert marked == {p["id"] for p in wrong} - flagged
    assert {p["id"] for p in points if p["status"] == "suspected label issue"} == flagged


def test_curve_sizes_end_with_every_image_and_extrapolation_reads_the_slope():
    assert curve_sizes([1, 2, 5, 10, 20, 50], np.array([12, 30, 7])) == [1, 2, 5, 10, 20, 30]
    assert curve_sizes([50], np.array([12])) == [12]
    rising = [{"per_class": n, "accuracy": a} for n, a in ((5, 0.60), (10, 0.70), (20, 0.80))]
    verdict = extrapolation(rising)
    assert verdict["points_per_doubling"] == pytest.approx(10.0) and verdict["rising"]
    assert "add about 10 points" in verdict["sentence"]
    one = [{"per_class": n, "accuracy": a} for n, a in ((5, 0.80), (10, 0.812), (20, 0.824))]
    assert "add about 1 point (" in extrapolation(one)["sentence"]
    flat = [{"per_class": n, "accuracy": a} for n, a in ((5, 0.9), (10, 0.902), (20, 0.903))]
    assert not extrapolation(flat)["rising"] and "flattened" in extrapolation(flat)["sentence"]
    # The gain is capped by what is left to 100%.
    assert extrapolation([{"per_class": 1, "accuracy": 0.5}, {"per_class": 2, "accuracy": 0.98}])[
        "expected_gain"
    ] == pytest.approx(2.0)


def test_the_last_point_of_a_cross_validated_curve_is_one_folds_training_images_per_class():
    # 5 folds of 3 classes × 40 images: each fit trains on 32 per class. The point "all" must say 32 (not
    # the 160 of the five folds' training rows summed) and fit every training row of each fold once.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(len(y), 4)) + y[:, None]
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    rows = learning_curve(LogisticRegression(), X, y, folds, [1, 5, 10, 50], draws=2, seed=0)
    assert [r["per_class"] for r in rows] == [1, 5, 10, 32]
    assert rows[-1]["train_images"] == 96 and rows[-1]["draws"] == 5
    assert rows[0]["train_images"] == 3 and rows[0]["draws"] == 10


def test_diagnose_names_the_missing_evaluation(in_tmp):
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    with pytest.raises(FileNotFoundError, match="reports/chosen_heads.json.*run stage evaluate"):
        diagnose.main(DIAGNOSE_ARGS)


def _signs_features(per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Real features: the first ``per_class`` training images of each hand sign through MobileNet α0.25 (ImageNet)."""
    import tensorflow as tf

    from pipeline.backbones import build_cut_model
    from pipeline.config import FeatureSetParams
    from pipeline.images import decode_image

    cut = build_cut_model(
        FeatureSetParams(backbone="mobilenet", weights=str(MOBILENET_025), alpha=0.25, size=size), seed=0
    )
    paths = [p for c in range(6) for p in sorted((SIGNS / "train" / str(c)).glob("*.jpg"))[:per_class]]
    labels = np.array([int(p.parent.name) for p in paths])
    pixels = tf.image.resize(np.stack([decode_image(p) for p in paths]).astype("float32"), (size, size))
    features = np.asarray(cut.model(cut.preprocess(pixels), training=False))
    return features.mean(axis=(1, 2)) if features.ndim == 4 else features, labels


@pytest.mark.slow
@pytest.mark.skipif(not (SIGNS.is_dir() and MOBILENET_025.is_file()), reason="needs ../shared (signs, MobileNet)")
def test_flipped_labels_rank_near_the_top():
    """5% of the hand signs' labels flipped: at least 80% of them are in the top 10% of the ranking."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.diagnosis.label_issues import cross_val_proba, rank_label_issues

    X, truth = _signs_features(per_class=70, size=96)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(truth), size=round(0.05 * len(truth)), replace=False)
    given = truth.copy()
    given[flipped] = (given[flipped] + rng.integers(1, 6, size=len(flipped))) % 6
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    quality, flagged = rank_label_issues(given, cross_val_proba(head, X, given, 6, folds=5, seed=0))
    top = np.argsort(quality, kind="stable")[: len(truth) // 10]
    assert np.isin(flipped, top).mean() >= 0.8
    assert flagged[flipped].mean() >= 0.5  # and cleanlab flags most of them itself


def test_label_issues_never_fork_a_process_where_jax_runs(monkeypatch):
    # cleanlab forks a multiprocessing pool by default; a fork of a process with JAX's threads can deadlock.
    import os

    import jax.numpy as jnp

    from pipeline.diagnosis.label_issues import rank_label_issues

    jnp.zeros(1).block_until_ready()  # JAX's threads are running, as in the diagnose stage
    forks = []
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or pytest.fail("os.fork() was called"))
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    proba = rng.dirichlet(np.ones(3), size=len(y)) * 0.3 + np.eye(3)[y] * 0.7
    quality, flagged = rank_label_issues(y, proba)
    assert not forks and quality.shape == flagged.shape == y.shape


def test_learning_curve_folds_are_the_val_split_or_cv_over_train_and_val():
    from pipeline.diagnosis.diagnose import _folds

    y = np.repeat([0, 1, 2], 10)
    ((train, held),) = _folds(21, y, 0, seed=0)[0]
    assert train.tolist() == list(range(21)) and held.tolist() == list(range(21, 30))
    folds, how = _folds(21, y, 3, seed=0)
    assert how == "3-fold cross-validation on train+val"
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(30))
    assert all(not set(train) & set(held) for train, held in folds)
    with pytest.raises(ValueError, match="validation split is empty.*heads.cv >= 2"):
        _folds(30, y, 0, seed=0)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("curve_draws", 0, "diagnose.curve_draws must be an integer >= 1"),
        ("curve_per_class", [0, 5], "diagnose.curve_per_class must be a list of integers >= 1"),
        ("map_max_iter", 100, "diagnose.map_max_iter must be an integer >= 250"),
        ("label_folds", 1, "diagnose.label_folds must be an integer >= 2"),
    ],
)
def test_bad_diagnose_params_are_named(key, value, expected):
    from pipeline.config import ParamsError, parse_params

    params = tiny_params("images", diagnose={key: value})
    with pytest.raises(ParamsError, match=re.escape(expected)):
        parse_params(params)


def test_an_ensemble_or_combination_winner_is_pictured_through_the_best_single_feature_set(tmp_path):
    """The ensemble has no store and a combination several: diagnose skips them and pictures the best single set."""
    import json as json_

    from pipeline.diagnosis.chosen import best_feature_set, chosen_heads, load_chosen

    (tmp_path / "a+b").mkdir()
    (tmp_path / "a+b" / "scores.json").write_text(json_.dumps({"combines": ["a", "b"], "variants": []}))
    evaluation = {
        "best": {"feature_set": "ensemble", "variant": "softvote-2"},
        "feature_sets": {
            "ensemble": {"variant": "softvote-2", "val_accuracy": 0.99},
            "a+b": {"variant": "x", "val_accuracy": 0.98},
            "a": {"variant": "y", "val_accuracy": 0.90},
            "b": {"variant": "z", "val_accuracy": 0.95},
        },
    }
    evaluation_only_combined = {
        **evaluation,
        "feature_sets": {k: evaluation["feature_sets"][k] for k in ("ensemble", "a+b")},
    }
    assert load_chosen(chosen_heads(evaluation_only_combined, tmp_path)) == {}
    assert best_feature_set(evaluation, {"a": None, "b": None}) == "b"
    assert best_feature_set({**evaluation, "best": {"feature_set": "a"}}, {"a": None, "b": None}) == "a"


def test_small_images_fill_their_tile_and_long_class_names_are_not_cut(tmp_path):
    # 24-px images (a satellite tile's size class) and a 20-letter class name, as a user's dataset has them.
    import hashlib

    from PIL import Image as PILImage

    from pipeline.diagnosis.gallery import contact_sheet, write_thumbnail
    from pipeline.manifest import Record

    path = tmp_path / "tile.png"
    PILImage.new("RGB", (24, 16), (200, 30, 30)).save(path)
    record = Record(
        "tile", str(path), 0, "HerbaceousVegetation", "val", hashlib.sha256(path.read_bytes()).hexdigest(), 24, 16
    )
    thumb = write_thumbnail(record, tmp_path / "thumbs", 96)
    assert PILImage.open(thumb).size == (96, 64)
    caption = ["true HerbaceousVegetation", "pred PermanentCrop", "0.91 · val"]
    sheet = contact_sheet([(thumb, caption)] * 3, tmp_path / "sheet.jpg", size=96, title="t", empty="none")
    from PIL import ImageDraw, ImageFont

    needed = ImageDraw.Draw(PILImage.new("RGB", (1, 1))).textlength(caption[0], font=ImageFont.load_default(size=11))
    assert PILImage.open(sheet).width >= 3 * needed  # three tiles, each as wide as its longest line
