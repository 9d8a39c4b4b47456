"""Dense variants × folds trained as one program equal lone fits; racing stops the dominated, never a slow-starting winner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import ParamsError, parse_params
from pipeline.heads.dense import DenseHead
from pipeline.heads.folds import make_folds
from pipeline.heads.racing import Leader, dominated
from pipeline.heads.sweep import Splits, run_sweep
from pipeline.heads.tally import Tally
from pipeline.heads.training import control_feature_sets, control_variants
from pipeline.heads.variants import expand_grid, make_preprocessor
from pipeline.selection.scoring import select_best


def _heads(**section):
    for kind in ("logreg", "svm_linear"):
        section.setdefault(kind, {})
        section[kind] = {"refine": 0, **section[kind]}
    return parse_params({"heads": {"n_jobs": 1, **section}}).heads


def _blobs(n_per_class=40, n_features=10, spread=1.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(3, n_features))
    y = np.repeat(np.arange(3), n_per_class)
    X = (centres[y] + rng.normal(size=(len(y), n_features))).astype(np.float32)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    cut = int(0.75 * len(y))
    return Splits(X[:cut], y[:cut], X[cut:], y[cut:])


def _xor(n=240, seed=0):
    """Two classes by the sign of x0·x1 (no linear head beats chance), plus noise columns."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 6)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    cut = int(0.75 * n)
    return Splits(X[:cut], y[:cut], X[cut:], y[cut:])


def test_dense_variants_and_folds_in_one_program_equal_each_fitted_alone():
    splits = _blobs()
    heads = _heads(
        kinds=["dense"],
        cv=3,
        race=0.0,
        dense={
            "hidden_units": [8],
            "dropout": [0.0, 0.5],
            "weight_decay": [0.0],
            "epochs": [15],
            "learning_rate": [0.01],
            "patience": 3,
            "batch_size": 16,
        },
    )
    rows = {v.id: (estimator, row) for v, estimator, row in run_sweep(expand_grid(heads), heads, {"avg": splits})}
    assert len(rows) == 2
    for variant in expand_grid(heads):
        correct = []
        for X_fit, y_fit, X_score, y_score in make_folds(splits, 3, heads.seed):
            scaler = make_preprocessor(variant, heads).fit(X_fit)
            alone = DenseHead(
                hidden_units=8,
                dropout=dict(variant.params)["dropout"],
                epochs=15,
                learning_rate=0.01,
                patience=3,
                batch_size=16,
                random_state=heads.seed,
            )
            alone.fit(scaler.transform(X_fit).astype(np.float32), y_fit)
            if X_score is not None:
                correct.append(alone.predict(scaler.transform(X_score).astype(np.float32)) == y_score)
        estimator, row = rows[variant.id]
        expected = "".join("1" if c else "0" for c in np.concatenate(correct))
        assert row["val_correct"] == expected and not row.get("raced_out")
        # The kept head is the refit on all of train+val, as alone.
        np.testing.assert_allclose(
            estimator.named_steps["head"].predict_proba(scaler.transform(splits.X_val)),
            alone.predict_proba(scaler.transform(splits.X_val).astype(np.float32)),
            atol=1e-5,
        )


def test_racing_stops_a_dominated_dense_variant_says_so_and_it_is_never_chosen():
    splits = _blobs()
    # A dense head that cannot learn in its few tiny steps, beside a logistic regression that separates the blobs.
    heads = _heads(
        kinds=["logreg", "dense"],
        cv=5,
        race=0.05,
        logreg={"C": [1.0]},
        dense={
            "hidden_units": [8],
            "dropout": [0.0],
            "weight_decay": [0.0],
            "epochs": [2],
            "learning_rate": [1e-6],
            "patience": 0,
        },
    )
    results = {v.kind: (estimator, row) for v, estimator, row in run_sweep(expand_grid(heads), heads, {"avg": splits})}
    estimator, row = results["dense"]
    assert estimator is None and row["val_proba"] is None
    assert row["raced_out"]["after_folds"] < 5 and row["raced_out"]["folds"] == 5
    assert row["raced_out"]["leader"] == "avg-logreg-C1" and row["raced_out"]["p_value"] < 0.05
    assert len(row["val_correct"]) < len(results["logreg"][1]["val_correct"])  # scored on the first folds only
    rows = [{"variant": k, "kind": k, **r} for k, (_, r) in results.items()]
    assert select_best(rows, "accuracy")["kind"] == "logreg"
    # Without racing the same variant runs every fold and keeps a head.
    heads_off = _heads(
        kinds=["logreg", "dense"],
        cv=5,
        race=0.0,
        logreg={"C": [1.0]},
        dense={
            "hidden_units": [8],
            "dropout": [0.0],
            "weight_decay": [0.0],
            "epochs": [2],
            "learning_rate": [1e-6],
            "patience": 0,
        },
    )
    full = {v.kind: (e, r) for v, e, r in run_sweep(expand_grid(heads_off), heads_off, {"avg": splits})}
    assert full["dense"][0] is not None and not full["dense"][1].get("raced_out")
    assert full["dense"][1]["val_correct"].startswith(row["val_correct"])  # the same fits on the folds it ran


def test_racing_never_stops_the_eventual_winner_that_starts_slow():
    # On XOR no linear head beats chance; a small learning rate makes the dense head's first epochs no better
    # than the linear leader's, so a race on early epochs would stop it. Racing compares finished folds.
    splits = _xor()
    dense = {
        "hidden_units": [32],
        "dropout": [0.0],
        "weight_decay": [0.0],
        "epochs": [300],
        "learning_rate": [0.003],
        "patience": 0,
        "batch_size": 32,
    }
    raced_heads = _heads(kinds=["logreg", "dense"], cv=5, race=0.05, logreg={"C": [0.01, 1.0, 100.0]}, dense=dense)
    plain_heads = _heads(kinds=["logreg", "dense"], cv=5, race=0.0, logreg={"C": [0.01, 1.0, 100.0]}, dense=dense)
    raced = {
        v.id: {**row, "kind": v.kind} for v, _, row in run_sweep(expand_grid(raced_heads), raced_heads, {"avg": splits})
    }
    plain = {
        v.id: {**row, "kind": v.kind} for v, _, row in run_sweep(expand_grid(plain_heads), plain_heads, {"avg": splits})
    }
    winner = select_best([{**r, "variant": i} for i, r in plain.items()], "accuracy")
    assert winner["kind"] == "dense" and winner["val_accuracy"] > 0.8
    assert max(r["val_accuracy"] for r in plain.values() if r["kind"] == "logreg") < 0.7
    slow = DenseHead(hidden_units=32, learning_rate=0.003, epochs=3, patience=0, batch_size=32).fit(
        splits.X_train, splits.y_train
    )
    assert (slow.predict(splits.X_val) == splits.y_val).mean() <= 0.6  # it does start slow
    chosen = select_best([{**r, "variant": i} for i, r in raced.items()], "accuracy")
    assert chosen["variant"] == winner["variant"] and not chosen.get("raced_out")
    assert chosen["val_correct"] == winner["val_correct"] and chosen["val_accuracy"] == winner["val_accuracy"]


def test_dominated_is_a_one_sided_exact_mcnemar_test_on_the_images_scored_so_far():
    leader = Leader("best", "1" * 30)
    tally = Tally()
    tally.correct.append(np.array([True] * 10 + [False] * 10))  # 20 images scored: 10 the leader alone got right
    assert dominated(tally, leader) == pytest.approx(0.5**10)
    even = Tally()
    even.correct.append(np.ones(20, bool))
    assert dominated(even, leader) == 1.0
    better = Tally()
    better.correct.append(np.ones(20, bool))
    assert dominated(better, Leader("worse", "0" * 30)) == 1.0  # it beats the leader: never dominated


def test_a_control_feature_set_is_random_weights_beside_pretrained_ones_and_gets_a_fixed_grid():
    features = parse_params(
        {
            "features": {
                "top": {"backbone": "efficientnet_lite0", "weights": "imagenet", "cut": "top_activation"},
                "random": {"backbone": "efficientnet_lite0", "weights": "none", "cut": "top_activation"},
            }
        }
    ).features
    assert control_feature_sets(features) == {"random"}
    assert control_feature_sets({"random": features["random"]}) == set()  # the experiment itself: the whole grid
    heads = parse_params({"heads": {"kinds": ["logreg", "svm_linear", "dense"]}}).heads
    kept, settings = control_variants("random", expand_grid(heads), heads)
    assert {v.kind for v in kept} == {"logreg"} and settings.logreg.refine == 0
    assert [v.id for v in kept] == ["avg-logreg-C1"]  # heads.control_values: C = 1 only
    heads = parse_params(
        {
            "heads": {
                "kinds": ["logreg", "svm_linear"],
                "control_kinds": ["logreg", "svm_linear"],
                "control_values": {"C": [0.1, 10]},
                "pooling": ["avg", "max"],
            }
        }
    ).heads
    kept, settings = control_variants("random", expand_grid(heads), heads)
    assert sorted(v.id for v in kept) == sorted(
        f"{p}-{k}-C{c}" for p in ("avg", "max") for k in ("logreg", "svm_linear") for c in ("0.1", "10")
    )
    assert settings.svm_linear.C == (0.1, 10.0) and settings.svm_linear.refine == 0
    with pytest.raises(ParamsError, match=r"heads.control_values.gamma is not a setting of heads.control_kinds"):
        parse_params({"heads": {"control_values": {"gamma": [1.0]}}})
    with pytest.raises(ParamsError, match=r"heads.control_values.C: heads.logreg.C must be numbers > 0"):
        parse_params({"heads": {"control_values": {"C": [-1.0]}}})
    with pytest.raises(ValueError, match="heads.control_kinds"):
        control_variants("random", [v for v in expand_grid(heads) if v.kind == "dense"], heads)


def _imbalanced(seed=0):
    """Three blobs, 90/45/45 images: a tiny C predicts the largest class and is far behind."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(3, 8))
    y = np.repeat(np.arange(3), [90, 45, 45])
    X = (centres[y] + rng.normal(size=(len(y), 8))).astype(np.float32)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    return Splits(X[:135], y[:135], X[135:], y[135:])


# Logistic regression's tiny C predicts the largest class (its intercept is not penalised): hopeless, stopped.
# Every C of the linear SVM separates these blobs: none is dominated, and racing must change nothing.
@pytest.mark.parametrize("kind, hopeless", [("logreg", True), ("svm_linear", False)])
def test_a_raced_c_search_stops_the_hopeless_values_and_finds_what_the_full_search_finds(kind, hopeless):
    splits = _imbalanced()
    grid = {kind: {"C": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "refine": 2}}
    rows = {}
    for race in (0.0, 0.05):
        heads = parse_params({"heads": {"kinds": [kind], "n_jobs": 1, "cv": 5, "race": race, **grid}}).heads
        rows[race] = {
            v.id: (estimator, {**row, "kind": kind})
            for v, estimator, row in run_sweep(expand_grid(heads), heads, {"avg": splits})
        }
    full, raced = rows[0.0], rows[0.05]
    assert set(raced) == set(full)  # the same values tried: the listed ones and the bisection's
    stopped = {i for i, (_, row) in raced.items() if row.get("raced_out")}
    if hopeless:
        assert f"avg-{kind}-C1e-06" in stopped and len(stopped) >= 2
    else:
        assert not stopped and all(raced[i][1]["val_correct"] == full[i][1]["val_correct"] for i in full)
    for i in stopped:
        estimator, row = raced[i]
        assert estimator is None and row["raced_out"]["after_folds"] < 5
        assert full[i][1]["val_correct"].startswith(row["val_correct"])  # the same fits on the folds it ran
    # The values that finished are scored as in the full search: their warm starts came from other values,
    # but the solver's tolerance makes the path a value is reached by immaterial.
    assert all(raced[i][1]["val_correct"] == full[i][1]["val_correct"] for i in full if i not in stopped)
    best = select_best([{**r, "variant": i} for i, (_, r) in full.items()], "accuracy")
    chosen = select_best([{**r, "variant": i} for i, (_, r) in raced.items()], "accuracy")
    assert chosen["variant"] == best["variant"] and chosen["val_accuracy"] == best["val_accuracy"]
    assert raced[chosen["variant"]][0] is not None


def test_the_stage_reuses_raced_rows_and_races_them_again_when_another_variant_changes(in_tmp):
    from conftest import tiny_params, write_image_folder, write_params

    from pipeline.stages import extract, prepare
    from pipeline.stages import heads as heads_stage

    write_image_folder(in_tmp / "images", classes=2, per_class=40)
    # One hidden unit and a huge step: the unit dies (ReLU) and every image gets one class, half of them right.
    dense = {
        "hidden_units": [1],
        "dropout": [0.0],
        "weight_decay": [0.0],
        "epochs": [20],
        "learning_rate": [10.0],
        "patience": 0,
    }
    section = {"kinds": ["logreg", "dense"], "cv": 4, "race": 0.05, "logreg": {"C": [1.0], "refine": 0}, "dense": dense}
    write_params(in_tmp / "params.yaml", tiny_params("images", heads=section))
    prepare.main(
        [
            "--manifest",
            "data/manifest.csv",
            "--report",
            "reports/prepare.json",
            "--summary",
            "reports/prepare.md",
            "--metrics",
            "reports/data_metrics.json",
            "--no-progress",
        ]
    )
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    args = ["--features", "features/mv2.zarr", "--out", "heads/mv2", "--no-progress"]

    def run() -> dict:
        heads_stage.main(args)
        return {v["variant"]: v for v in json.loads((in_tmp / "heads/mv2/scores.json").read_text())["variants"]}

    first = run()
    dense_id = "avg-dense-h1-d0-wd0-lr10-e20"
    assert first[dense_id]["raced_out"]["leader"] == "avg-logreg-C1" and first[dense_id]["sha256"] is None
    assert not (in_tmp / f"heads/mv2/{dense_id}.joblib").exists()
    again = run()
    assert all(row["reused"] for row in again.values()) and again[dense_id]["raced_out"] == first[dense_id]["raced_out"]
    write_params(in_tmp / "params.yaml", tiny_params("images", heads={**section, "logreg": {"C": [0.5], "refine": 0}}))
    changed = run()
    assert {i for i, row in changed.items() if not row["reused"]} == {"avg-logreg-C0.5", dense_id}
    assert changed[dense_id]["raced_out"]["leader"] == "avg-logreg-C0.5"


def test_a_raced_row_ranks_after_every_full_one_and_is_never_chosen_whatever_its_partial_score():
    from pipeline.selection.scoring import rank

    full = {"variant": "avg-logreg-C1", "kind": "logreg", "params": {"C": 1.0}, "val_accuracy": 0.80}
    raced = {
        "variant": "avg-dense-h8",
        "kind": "dense",
        "params": {},
        "val_accuracy": 0.95,
        "raced_out": {"after_folds": 1, "folds": 5, "leader": "avg-logreg-C1", "p_value": 0.01},
    }
    assert sorted([raced, full], key=lambda r: rank(r, "accuracy")) == [full, raced]
    assert select_best([raced, full], "accuracy") is full
