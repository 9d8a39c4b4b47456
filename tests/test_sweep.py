"""The sweep engine: warm-started C paths, memory-mapped inputs, cross-validation, peak memory."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipeline.config import parse_params
from pipeline.heads.sweep import PeakRSS, Splits, plan_jobs, run_sweep
from pipeline.heads.variants import expand_grid
from pipeline.selection.cost import end_to_end_seconds


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=1.5, size=(3, 12))
    y = np.repeat(np.arange(3), 40)
    X = (centres[y] + rng.normal(size=(120, 12))).astype(np.float32)
    order = rng.permutation(120)
    X, y = X[order], y[order]
    return Splits(X[:90], y[:90], X[90:], y[90:])


def _heads(**overrides):
    # The listed C only (no coarse-to-fine search) and the val split, unless a test says otherwise.
    section = {"kinds": ["logreg"], "n_jobs": 1, "cv": 0, "logreg": {"C": [10.0, 0.01, 1.0]}, **overrides}
    for kind in ("logreg", "svm_linear"):
        if kind in section:
            section[kind] = {"refine": 0, **section[kind]}
    return parse_params({"heads": section}).heads


def test_logistic_regression_walks_its_c_path_with_warm_starts(splits):
    heads = _heads()
    jobs = plan_jobs(expand_grid(heads))
    assert len(jobs) == 1 and [dict(v.params)["C"] for v in jobs[0].variants] == [0.01, 1.0, 10.0]
    results = {v.id: (est, row) for v, est, row in run_sweep(expand_grid(heads), heads, {"avg": splits})}
    assert [results[f"avg-logreg-C{c}"][1]["warm_start_from_C"] for c in ("0.01", "1", "10")] == [None, 0.01, 1.0]
    # Each C's kept model is its own solution (to the solver's tolerance), the one a cold fit reaches.
    scaler = StandardScaler().fit(splits.X_train)
    X, X_val = scaler.transform(splits.X_train), scaler.transform(splits.X_val)
    for c in (0.01, 1.0, 10.0):
        cold = LogisticRegression(C=c, max_iter=2000).fit(X, splits.y_train)
        warm = results[f"avg-logreg-C{c:g}"][0].named_steps["head"]
        np.testing.assert_allclose(warm.predict_proba(X_val), cold.predict_proba(X_val), atol=0.03)
    assert (
        results["avg-logreg-C0.01"][0].named_steps["head"].coef_.std()
        < results["avg-logreg-C10"][0].named_steps["head"].coef_.std()
    )


def test_workers_get_memory_maps_not_copies(splits):
    heads = _heads(kinds=["logreg", "svm_linear"], n_jobs=2, svm_linear={"C": [0.1, 1.0]})
    rows = [row for _, _, row in run_sweep(expand_grid(heads), heads, {"avg": splits})]
    assert len(rows) == 5
    # Computed inside the loky worker: a pickled copy would arrive as a plain ndarray.
    assert all(row["features_memmapped"] for row in rows)
    assert all(row["val_accuracy"] > 0.8 and row["fit_seconds"] > 0 for row in rows)


def test_cross_validation_scores_on_train_plus_val_and_refits_on_all(splits):
    heads = _heads(cv=3, logreg={"C": [1.0]})
    [(variant, estimator, row)] = list(run_sweep(expand_grid(heads), heads, {"avg": splits}))
    assert row["val_accuracy_std"] is not None and 0.8 < row["val_accuracy"] <= 1.0
    assert estimator.named_steps["standardize"].n_samples_seen_ == len(splits.y_train) + len(splits.y_val)


def test_cross_validation_refuses_more_folds_than_the_smallest_class(splits):
    heads = _heads(cv=50, logreg={"C": [1.0]})
    with pytest.raises(ValueError, match="heads.cv=50.*smallest class has 40"):
        list(run_sweep(expand_grid(heads), heads, {"avg": splits}))


def test_pca_that_asks_for_too_many_components_is_named(splits):
    heads = _heads(pca=[64], logreg={"C": [1.0]})
    with pytest.raises(ValueError, match="heads.pca=64.*12"):
        list(run_sweep(expand_grid(heads), heads, {"avg": splits}))


def test_peak_rss_sees_a_large_allocation():
    import time

    with PeakRSS() as memory:
        block = np.ones(80 * 2**20 // 8)  # 80 MiB, touched
        time.sleep(0.05)  # freed within the block: the sampling thread, not the exit, must see it
        del block
    assert 60 < memory.peak_mib < 200
    with PeakRSS() as idle:
        pass
    assert idle.peak_mib < 20


def test_end_to_end_cost_counts_every_epoch_of_every_variant():
    rows = [{"n_epochs": None}, {"n_epochs": 10}]
    # logreg: 100 train + 20 val images once; dense: 10 epochs of 100 train + 20 val.
    assert end_to_end_seconds(rows, seconds_per_image=0.5, n_train=100, n_val=20) == 0.5 * (120 + 1020)
    # 3-fold CV: epochs × k × (train+val) + train+val per variant.
    assert end_to_end_seconds(rows, seconds_per_image=1.0, n_train=100, n_val=20, cv=3) == (1 * 3 * 120 + 120) + (
        10 * 3 * 120 + 120
    )


def test_a_fit_that_stops_at_its_iteration_limit_is_counted_on_its_row_not_warned_anonymously(splits):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    heads = _heads(cv=3, logreg={"C": [1e-3, 1e4], "max_iter": 2})
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        rows = {v.id: row for v, _, row in run_sweep(expand_grid(heads), heads, {"avg": splits})}
    assert not [w for w in escaped if issubclass(w.category, ConvergenceWarning)]
    assert rows["avg-logreg-C10000"]["not_converged"] == 4  # 3 folds and the refit on train+val
    heads = _heads(cv=3, logreg={"C": [1e-3]})
    [(_, _, row)] = list(run_sweep(expand_grid(heads), heads, {"avg": splits}))
    assert row["not_converged"] == 0


def test_a_watched_fit_passes_other_warnings_on():
    import warnings

    from pipeline.heads.watch import Watched

    with pytest.warns(UserWarning, match="keep me"):
        with Watched() as fit:
            warnings.warn("keep me", UserWarning, stacklevel=2)
    assert fit.converged and fit.seconds >= 0
