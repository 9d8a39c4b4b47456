"""Selection fitted to the data size: cv auto, ties to the simpler variant, the indistinguishable count, the C search."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import zarr
from conftest import tiny_params, write_image_folder, write_params

from pipeline.config import ParamsError, parse_params
from pipeline.heads.search import best_value, coarse_to_fine
from pipeline.heads.sweep import Splits, resolve_cv, run_sweep
from pipeline.heads.variants import expand_grid
from pipeline.selection.scoring import indistinguishable, mcnemar_p, select_best


def _splits(val_per_class: int, classes: int = 2, train_per_class: int = 20, seed: int = 0) -> Splits:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.0, size=(classes, 6))

    def rows(per_class):
        y = np.repeat(np.arange(classes), per_class)
        return (centres[y] + rng.normal(size=(len(y), 6))).astype(np.float32), y

    X_train, y_train = rows(train_per_class)
    X_val, y_val = rows(val_per_class)
    return Splits(X_train, y_train, X_val, y_val)


def _heads(**section):
    return parse_params({"heads": {"kinds": ["logreg"], "n_jobs": 1, **section}}).heads


@pytest.mark.parametrize("val_per_class, folds", [(9, 5), (10, 0), (30, 0)])
def test_cv_auto_switches_to_cross_validation_below_the_threshold(val_per_class, folds):
    heads = _heads(cv="auto", cv_below=10, cv_folds=5, logreg={"C": [1.0]})
    splits = _splits(val_per_class)
    resolved, mode = resolve_cv(heads, splits)
    assert resolved == folds
    assert mode.startswith("5-fold CV on train+val (auto" if folds else "val split (auto")
    [(_, _, row)] = list(run_sweep(expand_grid(heads), heads, {"avg": splits}))
    # Cross-validation scores every image of train+val out of fold, the val split only val.
    scored = 2 * (20 + val_per_class) if folds else 2 * val_per_class
    assert len(row["val_correct"]) == scored
    assert (row["val_accuracy_std"] is not None) == bool(folds)


def test_cv_auto_caps_the_folds_at_the_smallest_class_and_keeps_the_val_split_for_views():
    heads = _heads(cv_below=30, cv_folds=5)
    small = _splits(2, train_per_class=1)  # 3 images of each class in train+val
    assert resolve_cv(heads, small)[0] == 3
    assert resolve_cv(heads, _splits(2))[0] == 5
    assert resolve_cv(heads, _splits(2), uses_views=True)[0] == 0


def test_cv_and_its_threshold_are_checked_at_load():
    assert _heads().cv == "auto"
    with pytest.raises(ParamsError, match="heads.cv must be 'auto', 0 .* Received: 1"):
        _heads(cv=1)
    with pytest.raises(ParamsError, match="heads.cv_folds must be a fold count >= 2. Received: 1"):
        _heads(cv_folds=1)


def _row(variant, kind, params, accuracy, seconds, **extra):
    return {
        "variant": variant,
        "kind": kind,
        "params": params,
        "val_accuracy": accuracy,
        "val_macro_f1": accuracy,
        "fit_seconds": seconds,
        "pca": None,
        "standardize": True,
        **extra,
    }


def test_ties_go_to_the_simpler_more_regularised_variant_whatever_the_fit_time_or_order():
    rows = [
        _row("avg-svm_rbf-C1-gscale", "svm_rbf", {"C": 1.0, "gamma": "scale"}, 0.9, 0.001),
        _row("avg-dense-h256-d0", "dense", {"hidden_units": 256, "dropout": 0.0}, 0.9, 0.002),
        _row("avg-logreg-C10", "logreg", {"C": 10.0}, 0.9, 0.003),
        _row("avg-logreg-C0.1", "logreg", {"C": 0.1}, 0.9, 5.0),
        _row("avg-logreg-C0.001", "logreg", {"C": 0.001}, 0.8, 0.0001),
    ]
    picks = set()
    for seed in range(6):
        shuffled = random.Random(seed).sample(rows, len(rows))
        picks.add(select_best(shuffled, "accuracy")["variant"])
    assert picks == {"avg-logreg-C0.1"}
    dense = [
        _row("avg-dense-h256-d0", "dense", {"hidden_units": 256, "dropout": 0.0}, 0.9, 0.1),
        _row("avg-dense-h256-d0.5", "dense", {"hidden_units": 256, "dropout": 0.5}, 0.9, 9.0),
        _row("avg-dense-h512-d0.5", "dense", {"hidden_units": 512, "dropout": 0.5}, 0.9, 0.1),
    ]
    assert select_best(dense, "accuracy")["variant"] == "avg-dense-h256-d0.5"


def test_mcnemar_counts_the_variants_indistinguishable_from_the_winner():
    best = "1" * 40 + "0" * 10
    close = "1" * 39 + "0" * 11  # one image fewer: no evidence of a difference
    far = "1" * 20 + "0" * 30  # 20 images fewer, none more: p < 1e-5
    assert mcnemar_p(best, best) == 1.0
    assert mcnemar_p(best, close) == 1.0 and mcnemar_p(best, far) < 1e-5
    rows = [
        dict(variant=v, val_correct=c, selection="val split")
        for v, c in (("best", best), ("close", close), ("far", far))
    ]
    rows.append(dict(variant="cv", val_correct=close, selection="5-fold CV on train+val"))
    assert indistinguishable(rows[0], rows) == 1
    with pytest.raises(ValueError, match="different images"):
        mcnemar_p(best, best[:-1])


def test_the_search_finds_an_optimum_between_and_outside_the_old_grid():
    # A smooth score peaked at C = 10**-3.3 (outside today's 0.01 ... 10): coarse decades, then bisection.
    peak = -3.3

    def score_of(values):
        return {c: (-abs(math.log10(c) - peak),) for c in values}

    tried = coarse_to_fine([10.0**e for e in range(-6, 5)], 3, score_of)
    assert abs(math.log10(best_value(tried)) - peak) <= 0.125 / 2 + 1e-9
    assert len(tried) == 11 + 6
    assert coarse_to_fine([1.0, 10.0], 0, score_of).keys() == {1.0, 10.0}
    with pytest.raises(ValueError, match="values > 0"):
        coarse_to_fine([0.0, 1.0], 1, score_of)


def test_the_sweep_searches_logistic_regression_c_to_an_optimum_below_the_old_grid():
    # 400 weakly informative features, 40 training rows: strong regularisation (the class-mean direction) wins,
    # so the best C lies below the old grid's smallest (0.01), which scores lower on 400 val images.
    rng = np.random.default_rng(1)
    y, y_val = np.repeat([0, 1], 20), np.repeat([0, 1], 200)
    X = rng.normal(size=(40, 400)).astype(np.float32) + 0.1 * (2 * y[:, None] - 1)
    X_val = rng.normal(size=(400, 400)).astype(np.float32) + 0.1 * (2 * y_val[:, None] - 1)
    decades = [10.0**e for e in range(-6, 5)]
    heads = _heads(cv=0, standardize=[False], logreg={"C": decades, "refine": 3})
    rows = {
        dict(v.params)["C"]: row
        for v, _, row in run_sweep(expand_grid(heads), heads, {"avg": Splits(X, y, X_val, y_val)})
    }
    assert all(r["searched"] == "C" for r in rows.values())
    best = min(rows, key=lambda c: (-rows[c]["val_accuracy"], c))
    old_grid = max(rows[c]["val_accuracy"] for c in (0.01, 0.1, 1.0, 10.0))
    assert best < 0.01 and rows[best]["val_accuracy"] > old_grid
    # Bisection added values between the decades (within the coarse range), warm-started from a neighbour.
    added = [c for c in rows if c not in decades]
    assert added and all(1e-6 <= c <= 1e4 and rows[c]["warm_start_from_C"] is not None for c in added)


def _run_stages(root, heads):
    from pipeline.stages import evaluate, extract, prepare
    from pipeline.stages import heads as heads_stage

    params = tiny_params("images", heads=heads)
    params["features"]["mv2b"] = {**params["features"]["mv2"], "cut": "block_1_project_BN"}
    write_params(root / "params.yaml", params)
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    for key in ("mv2", "mv2b"):
        extract.main(["--feature-set", key, "--out", f"features/{key}.zarr", "--no-progress"])
    heads_stage.main(["--features", "features", "--out", "heads", "--no-progress"])
    evaluate.main(
        [
            "--heads",
            "heads",
            "--metrics",
            "metrics.json",
            "--best",
            "reports/best",
            "--report",
            "reports/evaluation.json",
            "--leaderboard",
            "reports/leaderboard.csv",
            "--plots",
            "plots",
            "--export-target",
            "reports/export_target.json",
        ]
    )


def test_the_default_selection_runs_through_the_stages_with_a_combination_and_an_ensemble(in_tmp):
    write_image_folder(in_tmp / "images", classes=2, per_class=12)
    _run_stages(
        in_tmp,
        {
            "kinds": ["logreg", "svm_linear"],
            "cv": "auto",
            "cv_below": 30,
            "cv_folds": 3,
            "logreg": {"C": [1.0e-4, 1.0e-2, 1.0, 100.0], "refine": 1},
            "svm_linear": {"C": [0.1]},
            "combine": [["mv2", "mv2b"]],
            "ensemble": 2,
        },
    )
    scores = json.loads((in_tmp / "heads/mv2/scores.json").read_text())
    assert scores["sweep"]["cv"] == 3 and scores["sweep"]["selection"].startswith("3-fold CV on train+val (auto")
    assert len([r for r in scores["variants"] if r["kind"] == "logreg"]) == 4 + 2
    combined = json.loads((in_tmp / "heads/mv2+mv2b/scores.json").read_text())
    width = {k: json.loads((in_tmp / f"heads/{k}/scores.json").read_text())["provenance"] for k in ("mv2", "mv2b")}
    assert combined["combines"] == ["mv2", "mv2b"] and combined["provenance"]["cut"] == "block_2_add+block_1_project_BN"
    assert width["mv2"]["cut"] == "block_2_add"
    report = json.loads((in_tmp / "reports/evaluation.json").read_text())
    summary = report["feature_sets"]["mv2"]
    assert summary["selection"].startswith("3-fold CV") and isinstance(summary["indistinguishable"], int)
    assert {"mv2", "mv2b", "mv2+mv2b", "ensemble"} <= set(report["feature_sets"])
    assert report["feature_sets"]["ensemble"]["variant"] == "softvote-2"
    rows = {path.stem: json.loads(path.read_text()) for path in (in_tmp / "reports/best").glob("*.json")}
    assert {"mv2", "mv2b", "mv2+mv2b", "ensemble"} <= set(rows)  # rows of `dvc metrics show`
    assert rows["ensemble"]["head"] == "softvote-2" and 0 <= rows["mv2+mv2b"]["test_acc"] <= 1
    board = (in_tmp / "reports/leaderboard.md").read_text()
    assert "indistinguishable" in board and "3-fold CV on train+val" in board and "| ensemble |" in board
    target = json.loads((in_tmp / "reports/export_target.json").read_text())
    assert target["feature_set"] in ("mv2", "mv2b")

    # When the ensemble is the choice (made so here), diagnose's pictures are of the ensemble itself: its
    # replayed soft vote scores on test what evaluate scored, and the error page names its members.
    from pipeline.stages import diagnose

    ensemble = report["feature_sets"]["ensemble"]
    assert len(ensemble["members"]) == 2 and {m.split("/")[0] for m in ensemble["members"]} <= {"mv2", "mv2b"}
    from pipeline.diagnosis.chosen import chosen_heads

    replayed = chosen_heads({**report, "best": ensemble}, in_tmp / "heads")
    (in_tmp / "reports/chosen_heads.json").write_text(json.dumps(replayed))
    diagnose.main(
        [
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
    )
    import csv

    with open(in_tmp / "reports/diagnose/predictions.csv", newline="", encoding="utf-8") as handle:
        predictions = list(csv.DictReader(handle))
    test = [p for p in predictions if p["split"] == "test"]
    assert {p["feature_set"] for p in predictions} == {"ensemble"}
    assert sum(p["correct"] == "True" for p in test) / len(test) == pytest.approx(ensemble["test_accuracy"])
    errors = (in_tmp / "reports/errors.md").read_text()
    assert "ensemble / softvote-2 (the overall choice on validation: the mean probabilities of" in errors
    assert all(member in errors for member in ensemble["members"])
    # Selected by CV, the final heads saw val: val's errors are out-of-fold predictions, and say so.
    val = [p for p in predictions if p["split"] == "val"]
    assert val and all(p["out_of_fold"] == "True" for p in val) and all(p["out_of_fold"] == "False" for p in test)
    assert "Val images: out-of-fold predictions" in errors
    # Label issues are the ensemble's too: its members' out-of-fold probabilities, averaged.
    issues = (in_tmp / "reports/label_issues.md").read_text()
    assert "probabilities of **ensemble / softvote-2**" in issues


def test_a_combination_refuses_feature_sets_of_other_images(in_tmp):
    from pipeline.heads.combination import concatenate
    from pipeline.store.reader import FeatureSet

    def part(ids):
        return FeatureSet(np.zeros((len(ids), 2)), np.zeros(len(ids), int), np.array(ids), np.array(ids), ("a",), {})

    assert concatenate([part(["x", "y"]), part(["x", "y"])], ["p", "q"]).X.shape == (2, 4)
    with pytest.raises(
        ValueError,
        match=r"heads.combine \[p, q\]: the rows of q \(2 images\) do not align with "
        r"those of p \(2 images\); images in one but not the other: \['y', 'z'\]",
    ):
        concatenate([part(["x", "y"]), part(["x", "z"])], ["p", "q"])
    with pytest.raises(ValueError, match="same images in another order"):
        concatenate([part(["x", "y"]), part(["y", "x"])], ["p", "q"])
    with pytest.raises(ParamsError, match="heads.combine\\[0\\] names no feature set. Received: 'nope'"):
        parse_params({"heads": {"combine": [["nope", "mv2"]]}, "features": {"mv2": {"backbone": "mobilenet_v2"}}})


def test_a_combination_takes_the_rows_its_members_plans_read_and_reads_no_store_again(tmp_path):
    from test_store import NAMES, extract, records

    from pipeline.heads.combination import open_combination
    from pipeline.heads.plan import PooledReads, plan_feature_set
    from pipeline.store.layout import StoreError, chunk_file, store_path

    manifest = records(NAMES)
    stores = [store_path(tmp_path / "features", key) for key in ("mv2", "mv2b")]
    for store in stores:
        extract(store, [r.sha256 for r in manifest])
    heads = _heads(logreg={"C": [1.0]})
    expected = {
        split: open_combination(stores, ["mv2", "mv2b"], split, manifest=manifest, pooling="avg")
        for split in ("train", "val")
    }
    reads = PooledReads()  # what the heads stage shares between its feature sets' plans
    for store in stores:
        plan_feature_set([store], heads, tmp_path / "heads" / store.stem, manifest, reads=reads)
    # Damaged after the members' plans read it: reading a chunk of it again would be refused.
    chunk = chunk_file(stores[0], zarr.open_group(str(stores[0]), mode="r")["X"], "X", 0)
    raw = chunk.read_bytes()
    chunk.write_bytes(raw[: len(raw) // 2])
    plan, data = plan_feature_set(stores, heads, tmp_path / "heads/mv2+mv2b", manifest, reads=reads)
    assert plan.name == "mv2+mv2b"
    np.testing.assert_array_equal(data["avg"].X_train, expected["train"].X)
    np.testing.assert_array_equal(data["avg"].X_val, expected["val"].X)
    np.testing.assert_array_equal(data["avg"].y_train, expected["train"].y)
    with pytest.raises(StoreError, match="mv2.zarr: chunk 0 is corrupt"):  # without them, the stores are read
        plan_feature_set(stores, heads, tmp_path / "heads/again", manifest)
