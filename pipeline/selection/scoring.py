"""Choosing on validation and scoring once on test: ranking, the best variant, test scores with an interval.

Ties of the validation score go to the simpler, more regularised variant
(:func:`complexity`, from each kind's registry entry), never to whichever fit
happened to be faster. :func:`indistinguishable` counts the variants a paired
McNemar test on the validation images cannot tell from the winner: with a few
dozen validation images the top of the ranking is often a coin toss, and the
leaderboard says so.

Only the variant chosen on validation (or by cross-validation on train+val,
with ``heads.cv``) is ever scored on test, so the reported test numbers are not
themselves selected on test. :func:`rank` is the one ordering every choice
uses — the leaderboard, the best per feature set, the best overall, the best
dense head that fine-tuning starts from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from pipeline.config import EvaluateParams
from pipeline.heads.registry import HEAD_KINDS
from pipeline.heads.variants import predict_views

#: Significance level of the paired test that counts the variants indistinguishable from the winner.
ALPHA = 0.05


def complexity(row: dict) -> tuple:
    """Sort key of a score row from simplest and most regularised to the least (see the registry).

    The kind's ``simplicity`` first (logistic regression before an RBF SVM),
    then its ``regularisation`` settings (smaller C, fewer hidden units, more
    dropout first), then fewer PCA components and standardised before not.
    Rows of kinds outside the registry (fine-tuning) come last.
    """
    kind = HEAD_KINDS.get(row.get("kind"))
    if kind is None:
        return (len(HEAD_KINDS) + 1, ())
    params = row.get("params") or {}
    settings = tuple(
        sign * float(params[name]) for name, sign in kind.regularisation if isinstance(params.get(name), (int, float))
    )
    pca = row.get("pca")
    return (kind.simplicity, settings, float("inf") if pca is None else float(pca), not row.get("standardize", True))


def rank(row: dict, select_by: str) -> tuple:
    """Sort key, best first: the validation score, then the simpler, more regularised variant, then the other metric.

    Variants stopped by racing (scored on their first folds only) come after
    every variant scored in full. Fit time is no part of it (it changes from
    run to run); the feature set and the variant id make the order total, so
    the choice is the same every run.
    """
    other = "macro_f1" if select_by == "accuracy" else "accuracy"
    return (
        bool(row.get("raced_out")),
        -(row.get(f"val_{select_by}") or 0.0),
        complexity(row),
        -(row.get(f"val_{other}") or 0.0),
        row.get("feature_set", ""),
        row["variant"],
    )


def select_best(rows: Sequence[dict], select_by: str) -> dict:
    """The row with the best validation score; ties go to the simpler, more regularised variant (:func:`rank`).

    Variants stopped by racing (``raced_out``: scored on some folds only, no
    fitted head) are never chosen.
    """
    scored = [r for r in rows if r.get(f"val_{select_by}") is not None and not r.get("raced_out")]
    if not scored:
        raise ValueError("no variant has a validation score (is the validation split empty?)")
    return min(scored, key=lambda r: rank(r, select_by))


def mcnemar_p(a: str, b: str) -> float:
    """Two-sided exact McNemar p-value of two heads scored on the same images.

    Parameters
    ----------
    a, b : str
        One ``0``/``1`` per image (``val_correct`` of a score row), same images in the same order.
    """
    if len(a) != len(b):
        raise ValueError(f"paired test on {len(a)} and {len(b)} images: the rows were scored on different images")
    right_a = np.frombuffer(a.encode(), dtype=np.uint8) == ord("1")
    right_b = np.frombuffer(b.encode(), dtype=np.uint8) == ord("1")
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def indistinguishable(best: dict, rows: Sequence[dict], alpha: float = ALPHA) -> int | None:
    """How many other rows the paired McNemar test cannot tell from ``best`` at level ``alpha``.

    Only rows scored the same way on the same images count (same ``selection``
    and as many ``val_correct`` images); ``None`` when ``best`` has no
    ``val_correct`` (heads fitted before it was recorded).
    """
    if not best.get("val_correct"):
        return None
    return sum(1 for row in rows if row is not best and tied(best, row, alpha))


def tied(best: dict, row: dict, alpha: float = ALPHA) -> bool:
    """Whether the paired McNemar test cannot tell ``row`` from ``best`` at level ``alpha``.

    False when the two were not scored the same way on as many images (other ``selection``, other
    ``val_correct`` length) or either has no ``val_correct``.
    """
    return bool(
        best.get("val_correct")
        and row.get("val_correct")
        and row.get("selection") == best.get("selection")
        and len(row["val_correct"]) == len(best["val_correct"])
        and mcnemar_p(best["val_correct"], row["val_correct"]) >= alpha
    )


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, *, n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
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
