"""Are some labels wrong? Confident learning (cleanlab) on cross-validated probabilities of train+val.

:func:`cross_val_proba` refits a clone of the chosen head on k - 1 folds of
train+val and predicts the held out fold, so every image gets probabilities
from a head that never saw its label. Heads without probabilities of their own
(SVMs) are wrapped in temperature scaling fitted by an inner cross-validation
(``CalibratedClassifierCV(method="temperature", ensemble=False)``), so the
folds' probabilities are comparable. :func:`rank_label_issues` hands them to
cleanlab: ``find_label_issues`` flags images whose given label the confident
joint says is likely wrong, and ``get_label_quality_scores`` (self-confidence:
the held-out probability of the given label) ranks every image, worst first.
Labels are never changed: the stage only lists them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold

from pipeline.diagnosis.predictions import full_proba


def _with_probabilities(estimator: Any, smallest_class: int) -> Any:
    if hasattr(estimator, "predict_proba"):
        return clone(estimator)
    return CalibratedClassifierCV(clone(estimator), method="temperature", cv=min(3, smallest_class), ensemble=False)


def cross_val_proba(estimator: Any, X: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold class probabilities of every row.

    Parameters
    ----------
    estimator : scikit-learn estimator
        The chosen head (cloned for every fold).
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    n_classes : int
    folds : int
        Folds of the stratified split (fewer when the smallest class has fewer images).
    seed : int

    Returns
    -------
    ndarray of shape (n_samples, n_classes)

    Raises
    ------
    ValueError
        If some class has fewer than two images (no fold could hold it out and keep it).
    """
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if smallest < 2:
        counts = {int(c): int(n) for c, n in enumerate(np.bincount(y)) if n}
        raise ValueError(f"label issues need at least 2 train+val images of every class; images per class: {counts}")
    k = min(folds, smallest)
    proba = np.zeros((len(y), n_classes))
    for train, held in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y):
        inner_smallest = int(np.bincount(y[train])[np.unique(y[train])].min())
        fitted = _with_probabilities(estimator, inner_smallest).fit(X[train], y[train])
        proba[held] = full_proba(fitted, X[held], n_classes)
    return proba


def rank_label_issues(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's verdict on each given label.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
        Given labels.
    proba : ndarray of shape (n_samples, n_classes)
        Out-of-fold probabilities (:func:`cross_val_proba`).

    Returns
    -------
    quality : ndarray of shape (n_samples,)
        Label quality score in [0, 1] (self-confidence); low: the label looks wrong.
    flagged : ndarray of shape (n_samples,), dtype bool
        Images cleanlab's confident learning flags as likely mislabelled.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # cleanlab wants every class to have a column that some image is labelled with.
    present = np.unique(y)
    columns = proba[:, present]
    columns = columns / np.clip(columns.sum(axis=1, keepdims=True), 1e-12, None)
    labels = np.searchsorted(present, y)
    quality = get_label_quality_scores(labels, columns, method="self_confidence")
    # n_jobs=1: cleanlab would otherwise fork a multiprocessing pool from a process where JAX's threads run
    # (a fork of a multithreaded process can deadlock); on a few thousand rows one process takes milliseconds.
    flagged = (
        find_label_issues(labels, columns, filter_by="prune_by_noise_rate", n_jobs=1)
        if len(present) > 1
        else np.zeros(len(y), bool)
    )
    return quality, np.asarray(flagged, bool)
