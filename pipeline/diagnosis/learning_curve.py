"""Would more labelled images help? Accuracy of a chosen head refitted on fewer training images per class.

For each number of training images per class (``diagnose.curve_per_class``,
then all available), :func:`learning_curve` draws that many images of each
class at random (``diagnose.curve_draws`` times), refits a clone of the chosen
head on them and scores it on validation — or, with ``heads.cv``, on each held
out fold of train+val. Test is never read. Everything runs on cached features:
no backbone.

:func:`extrapolation` turns the curve into one sentence: the slope of mean
accuracy against log2(images per class) over the last three points, i.e. what
one more doubling of the training images added lately; a curve rising by less
than one point per doubling is called flat.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score

log = logging.getLogger(__name__)

#: Below this gain per doubling (accuracy points) the curve is called flat.
FLAT_POINTS = 1.0


def curve_sizes(per_class: Sequence[int], class_counts: np.ndarray) -> list[int]:
    """The images per class of each point: the listed ones below the largest class, then all of them."""
    largest = int(class_counts.max())
    return sorted({int(n) for n in per_class if n < largest}) + [largest]


def _min_rows(estimator: Any) -> int:
    """Fewest training rows the estimator can be fitted on (a fixed PCA needs as many rows as components)."""
    steps = dict(getattr(estimator, "steps", []))
    components = getattr(steps.get("pca"), "n_components", None)
    return components if isinstance(components, int) else 1


def _largest_training_counts(y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Training images per class of the largest fold (class by class): what "all available" means per fit.

    Each fold is one fit, so the counts are per fold, never summed over folds
    (summed, five CV folds of 100 images per class would read as 400).
    """
    per_fold = [np.bincount(y[train], minlength=int(y.max()) + 1) for train, _ in folds]
    counts = np.max(per_fold, axis=0)
    return counts[counts > 0]


def learning_curve(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    per_class: Sequence[int],
    draws: int,
    seed: int,
) -> list[dict]:
    """Accuracy against training images per class.

    Parameters
    ----------
    estimator : scikit-learn estimator
        The chosen head (fitted or not: it is cloned for every fit).
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    folds : sequence of (train rows, evaluation rows)
        One pair (train split, val split), or the folds of cross-validation.
    per_class : sequence of int
        Images per class of the points below "all".
    draws : int
        Random draws of the training images per point and fold (one at "all": nothing to draw).
    seed : int

    Returns
    -------
    list of dict
        One row per point: ``per_class``, ``train_images`` (mean), ``accuracy`` (mean over draws
        and folds), ``low`` and ``high`` (the lowest and highest draw), ``draws``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for n in curve_sizes(per_class, _largest_training_counts(y, folds)):
        scores, sizes = [], []
        for train, held in folds:
            by_class = [train[y[train] == c] for c in np.unique(y[train])]
            everything = all(len(members) <= n for members in by_class)
            for _ in range(1 if everything else draws):
                picked = np.concatenate([rng.choice(m, size=min(n, len(m)), replace=False) for m in by_class])
                if len(picked) < _min_rows(estimator):
                    break
                fitted = clone(estimator).fit(X[picked], y[picked])
                scores.append(accuracy_score(y[held], fitted.predict(X[held])))
                sizes.append(len(picked))
        if not scores:
            log.info("learning curve: %d per class is fewer rows than the head's PCA needs; point left out", n)
            continue
        rows.append(
            {
                "per_class": n,
                "train_images": float(np.mean(sizes)),
                "accuracy": float(np.mean(scores)),
                "low": float(np.min(scores)),
                "high": float(np.max(scores)),
                "draws": len(scores),
            }
        )
    return rows


def extrapolation(rows: Sequence[dict]) -> dict:
    """What doubling the training images would likely add, from the curve's last three points.

    Returns
    -------
    dict
        ``points_per_doubling`` (accuracy points, least squares over the last
        three points against log2 of images per class; ``None`` with fewer than
        two points), ``expected_gain`` (that slope, capped by what is left to
        100%), ``rising`` and ``sentence``.
    """
    tail = list(rows)[-3:]
    if len(tail) < 2:
        return {
            "points_per_doubling": None,
            "expected_gain": None,
            "rising": None,
            "sentence": "too few points for a learning curve (the smallest class has too few training images)",
        }
    x = np.log2([r["per_class"] for r in tail])
    acc = 100 * np.array([r["accuracy"] for r in tail])
    slope = float(np.polyfit(x, acc, 1)[0])
    gain = float(min(max(slope, 0.0), 100 - acc[-1]))
    last = tail[-1]
    how = (
        f"(least squares slope of validation accuracy against log2(images per class) over the last "
        f"{len(tail)} points, {tail[0]['per_class']}–{last['per_class']} per class: {slope:+.1f} points "
        "per doubling)"
    )
    if slope >= FLAT_POINTS:
        points = "point" if round(gain) == 1 else "points"
        sentence = (
            f"the curve is still rising: doubling the training images would likely add about {gain:.0f} {points} {how}"
        )
    else:
        sentence = f"the curve has flattened: more images of the same kind would likely add under 1 point {how}"
    return {
        "points_per_doubling": round(slope, 2),
        "expected_gain": round(gain, 2),
        "rising": slope >= FLAT_POINTS,
        "sentence": sentence,
    }
