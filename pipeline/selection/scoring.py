"""Choosing on validation and scoring once on test: ranking, the best variant, test scores with an interval.

Only the variant chosen on validation (or by cross-validation on train+val,
with ``heads.cv``) is ever scored on test, so the reported test numbers are not
themselves selected on test. :func:`rank` is the one ordering every choice
uses — the leaderboard, the best per feature set, the best overall, the best
dense head that fine-tuning starts from.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

from pipeline.config import EvaluateParams
from pipeline.heads.variants import predict_views


def rank(row: dict, select_by: str) -> tuple:
    """Sort key, best first: the validation score, then the other metric, then the faster fit."""
    other = "macro_f1" if select_by == "accuracy" else "accuracy"
    return (-(row.get(f"val_{select_by}") or 0.0), -(row.get(f"val_{other}") or 0.0),
            row.get("fit_seconds") or 0.0, row.get("feature_set", ""), row["variant"])


def select_best(rows: Sequence[dict], select_by: str) -> dict:
    """The row with the best validation score; ties go to the other metric, then the faster fit."""
    scored = [r for r in rows if r.get(f"val_{select_by}") is not None]
    if not scored:
        raise ValueError("no variant has a validation score (is the validation split empty?)")
    return min(scored, key=lambda r: rank(r, select_by))


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, *, n_resamples: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy over resampled test images.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n_samples,)
    n_resamples : int
    seed : int

    Returns
    -------
    (low, high) : tuple of float
    """
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)
    if len(correct) == 0 or n_resamples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(n_resamples, len(correct)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def score_test(estimator, X: np.ndarray, y: np.ndarray, classes: Sequence[str], settings: EvaluateParams) -> dict:
    """Accuracy, macro-F1, per-class recall and a bootstrap interval of one head on test."""
    predicted = predict_views(estimator, X)
    low, high = bootstrap_ci(y, predicted, n_resamples=settings.bootstrap, seed=settings.seed)
    labels = list(range(len(classes)))
    recall = recall_score(y, predicted, labels=labels, average=None, zero_division=0)
    return {
        "test_accuracy": float(accuracy_score(y, predicted)),
        "test_accuracy_ci95": [round(low, 4), round(high, 4)],
        "test_macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "test_recall": {name: float(r) for name, r in zip(classes, recall)},
        "test_images": int(len(y)),
        "predicted": predicted,
    }
