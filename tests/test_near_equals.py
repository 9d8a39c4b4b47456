"""The soft vote of the near-equals (issue 31): variants the paired test cannot tell from the best, averaged.

A real tiny pipeline: two cuts of the tiny random MobileNetV2 on images whose classes overlap (each image's
brightness drawn around its class's), logistic regressions of several C and a linear SVM, 3-fold CV on
train+val. The images' seed was picked so that the vote is the best on validation; the C = 0.001 heads are
far worse than the best and the test tells them apart.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_params, write_params
from PIL import Image
from scipy.stats import binomtest

from pipeline.stages import evaluate, export, extract, prepare
from pipeline.stages import heads as heads_stage

pytestmark = pytest.mark.slow
SIZE = 5
HEADS = {
    "kinds": ["logreg", "svm_linear"],
    "logreg": {"C": [1e-3, 1e-2, 0.1, 1.0, 10.0], "refine": 0},
    "svm_linear": {"C": [0.1], "refine": 0},
    "cv": 3,
    "race": 0,
    "ensemble": 0,
    "near_equals": SIZE,
}
FEATURE_SETS = ("mv2", "mv2b")


def _write_images(root: Path, *, classes: int = 3, per_class: int = 14, seed: int = 7) -> None:
    """Noisy images whose brightness is drawn around their class's: the classes overlap, the heads disagree."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            path = root / f"class_{c}" / f"img_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            level = 90 + 25 * c + rng.normal(0, 15)
            Image.fromarray(np.clip(rng.normal(level, 40, size=(40, 48, 3)), 0, 255).astype(np.uint8)).save(path)


def _params(**heads) -> dict:
    params = tiny_params("images", heads={**HEADS, **heads})
    params["features"]["mv2b"] = {**params["features"]["mv2"], "cut": "block_5_add"}  # deeper, same backbone
    return params


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("near-equals")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        _write_images(root / "images")
        write_params(root / "params.yaml", _params())
        prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
        for key in FEATURE_SETS:
            extract.main(["--feature-set", key, "--out", f"features/{key}.zarr", "--no-progress"])
        heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
        evaluate.main(
            [
                *("--heads", "heads", "--metrics", "metrics.json", "--report", "reports/evaluation.json"),
                *("--leaderboard", "reports/leaderboard.csv", "--plots", "plots"),
                *("--export-target", "reports/export_target.json"),
            ]
        )
        yield root
    finally:
        os.chdir(cwd)


def _rows(root: Path, heads: str = "heads") -> list[dict]:
    """Every variant of every feature set, with its feature set."""
    rows = []
    for key in FEATURE_SETS:
        scores = json.loads((root / heads / key / "scores.json").read_text())
        rows += [{**row, "feature_set": key} for row in scores["variants"]]
    return rows


def _mcnemar(a: str, b: str) -> float:
    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b))
    return 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue


def _vote(root: Path) -> dict:
    return json.loads((root / "reports/evaluation.json").read_text())["feature_sets"]["near-equals"]


def test_the_vote_is_made_of_the_variants_indistinguishable_from_the_best_only(pipeline_run):
    from pipeline.selection.scoring import rank

    rows = _rows(pipeline_run)
    best = min(rows, key=lambda r: rank(r, "accuracy"))
    tied = [r for r in rows if _mcnemar(best["val_correct"], r["val_correct"]) >= 0.05]
    apart = [r for r in rows if r not in tied]
    # The weakest heads are told apart from the best, and the SVMs give no probabilities: neither can be a member.
    assert {r["variant"] for r in apart} == {"avg-logreg-C0.001"}
    with_probabilities = [r for r in tied if r["kind"] == "logreg"]
    assert len(with_probabilities) > SIZE
    expected = [
        f"{r['feature_set']}/{r['variant']}" for r in sorted(with_probabilities, key=lambda r: rank(r, "accuracy"))
    ]
    vote = _vote(pipeline_run)
    assert vote["variant"] == f"softvote-{SIZE}" and vote["members"] == expected[:SIZE]
    assert {m.split("/")[0] for m in vote["members"]} == set(FEATURE_SETS)  # within and across feature sets
    row = next(r for r in _leaderboard(pipeline_run) if r["feature_set"] == "near-equals")
    assert row["kind"] == "ensemble" and row["selection"] == "3-fold CV on train+val"


def _leaderboard(root: Path) -> list[dict]:
    import csv

    return list(csv.DictReader((root / "reports/leaderboard.csv").open()))


def test_its_validation_score_is_the_mean_of_the_members_out_of_fold_probabilities(pipeline_run):
    """Recomputed from the features: each member refitted on the same 3 folds of train+val, its probabilities averaged."""
    from sklearn.base import clone

    from pipeline.heads.folds import make_folds
    from pipeline.heads.plan import read_splits
    from pipeline.heads.saved import load_head
    from pipeline.manifest import read_manifest
    from pipeline.store.reader import open_feature_set

    records = read_manifest(pipeline_run / "data/manifest.csv")
    vote = _vote(pipeline_run)
    rows = {(r["feature_set"], r["variant"]): r for r in _rows(pipeline_run)}
    out_of_fold, on_test, labels = [], [], None
    for name in vote["members"]:
        key, variant = name.split("/")
        head = load_head(pipeline_run / "heads" / key, rows[(key, variant)])
        splits = read_splits(pipeline_run / f"features/{key}.zarr", ["avg"], records)["avg"]
        folds = make_folds(splits, 3, seed=0)[:-1]  # the last is the refit on all of train+val
        out_of_fold.append(np.concatenate([clone(head).fit(X, y).predict_proba(X_out) for X, y, X_out, _ in folds]))
        labels = np.concatenate([y_out for *_, y_out in folds])
        test = open_feature_set(pipeline_run / f"features/{key}.zarr", "test", manifest=records, pooling="avg")
        on_test.append(head.predict_proba(test.X))  # the refitted head, as evaluate scores it on test
    assert len(labels) == len(rows[("mv2", "avg-logreg-C1")]["val_correct"])  # train+val, not the val split
    assert vote["val_accuracy"] == pytest.approx(np.mean(np.mean(out_of_fold, axis=0).argmax(axis=1) == labels))
    assert vote["test_accuracy"] == pytest.approx(np.mean(np.mean(on_test, axis=0).argmax(axis=1) == test.y))


def test_the_vote_can_win_the_selection_and_is_exported_as_one_graph(pipeline_run):
    """The best on validation is the vote; it is exported, and its probabilities are the pipeline's."""
    from pipeline.heads.saved import load_head
    from pipeline.manifest import read_manifest
    from pipeline.store.reader import open_feature_set

    report = json.loads((pipeline_run / "reports/evaluation.json").read_text())
    best = report["best"]
    assert (best["feature_set"], best["variant"]) == ("near-equals", f"softvote-{SIZE}")
    singles = [s for k, s in report["feature_sets"].items() if k in FEATURE_SETS]
    assert all(best["val_accuracy"] > s["val_accuracy"] for s in singles)
    assert json.loads((pipeline_run / "metrics.json").read_text())["head"] == f"near-equals/softvote-{SIZE}"
    target = json.loads((pipeline_run / "reports/export_target.json").read_text())
    assert (target["feature_set"], target["form"]) == ("near-equals", "ensemble") and "not_exported" not in target
    out = pipeline_run / "models"
    export.main(["--target", "reports/export_target.json", "--out", str(out)])
    card = json.loads((out / "card.json").read_text())
    assert [f"{m['feature_set']}/{m['variant']}" for m in card["members"]] == best["members"]
    (backbone,) = card["shared_backbones"]  # five heads on two cuts of one network: one backbone, two branches
    assert backbone["feature_sets"] == list(FEATURE_SETS) and backbone["shared"]
    # The exported model on the test images against the members' mean probabilities on the cached features.
    from pipeline.export.predict_command import load_model, predict_files

    records = read_manifest(pipeline_run / "data/manifest.csv")
    rows = {(r["feature_set"], r["variant"]): r for r in _rows(pipeline_run)}
    expected, test = [], None
    for name in best["members"]:
        key, variant = name.split("/")
        test = open_feature_set(pipeline_run / f"features/{key}.zarr", "test", manifest=records, pooling="avg")
        expected.append(load_head(pipeline_run / "heads" / key, rows[(key, variant)]).predict_proba(test.X))
    by_id = {r.id: r for r in records}
    results, failures = predict_files(load_model(out), [pipeline_run / by_id[i].path for i in test.ids], progress=False)
    assert not failures
    got = np.stack([proba for _, proba in results])
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=card["check_against_pipeline"]["tolerance"])
    assert card["check_against_pipeline"]["accuracy_exported"] == pytest.approx(best["test_accuracy"])


def test_a_vote_pooled_two_ways_on_one_feature_set_is_refused_naming_it(pipeline_run, caplog):
    """Heads on avg and max pooling of each feature set: the vote mixes them, which one graph cannot hold."""
    from pipeline.config import load_params
    from pipeline.manifest import read_manifest
    from pipeline.selection.leaderboard import evaluate as evaluate_heads
    from pipeline.selection.leaderboard import export_target

    write_params(pipeline_run / "pooled.yaml", _params(pooling=["avg", "max"], near_equals=20))
    heads_stage.main(["--features", "features", "--out", "heads-pooled", "--params", "pooled.yaml", "--no-progress"])
    params = load_params(pipeline_run / "pooled.yaml")
    records = read_manifest(pipeline_run / "data/manifest.csv")
    report, leaderboard, _ = evaluate_heads(
        pipeline_run / "heads-pooled", params.evaluate, records, near=params.heads.near_equals
    )
    vote = report["feature_sets"]["near-equals"]
    name = f"near-equals/{vote['variant']}"
    assert {m.split("/")[1].split("-")[0] for m in vote["members"] if m.startswith("mv2/")} == {"avg", "max"}
    # Named for export: refused, with the reason.
    with pytest.raises(
        ValueError,
        match=rf"export.variant '{name}' cannot be exported: the soft vote {name} has members on feature set "
        "mv2b? pooled avg and max",
    ):
        export_target(report, leaderboard, pipeline_run / "heads-pooled", name)
    # Best on validation (made so here): not exported, and the target says which and why.
    report = {**report, "best": vote}
    target = export_target(report, leaderboard, pipeline_run / "heads-pooled", None)
    assert (target["not_exported"]["feature_set"], target["not_exported"]["variant"]) == tuple(name.split("/"))
    assert re.match(rf"the soft vote {name} has members on feature set mv2b? pooled", target["not_exported"]["reason"])
    assert target["feature_set"] in FEATURE_SETS and target["form"] == "single"
    assert f"near-equals / {vote['variant']} is best on validation but is not exported" in caplog.text


def test_the_export_stage_refuses_a_target_whose_members_are_pooled_two_ways(pipeline_run, tmp_path):
    target = json.loads((pipeline_run / "reports/export_target.json").read_text())
    member = next(m for m in target["members"][1:] if m["feature_set"] == target["members"][0]["feature_set"])
    member["row"] = {**member["row"], "pooling": "max"}
    (tmp_path / "target.json").write_text(json.dumps(target))
    with pytest.raises(
        ValueError,
        match=rf"near-equals / softvote-{SIZE} cannot be exported: its members read feature set "
        rf"{member['feature_set']} pooled two ways",
    ):
        export.main(["--target", str(tmp_path / "target.json"), "--out", str(tmp_path / "models")])


def test_near_equals_zero_picks_one(pipeline_run):
    from pipeline.config import load_params
    from pipeline.manifest import read_manifest
    from pipeline.selection.leaderboard import evaluate as evaluate_heads

    params = load_params(pipeline_run / "params.yaml")
    records = read_manifest(pipeline_run / "data/manifest.csv")
    report, _, _ = evaluate_heads(pipeline_run / "heads", params.evaluate, records, near=0)
    assert set(report["feature_sets"]) == set(FEATURE_SETS) and report["best"]["feature_set"] in FEATURE_SETS
