"""Scoring a sweep's fitted heads on their folds, and the score row each variant gets.

A :class:`Tally` collects one variant's fits (seconds, peak memory, whether
each converged: :class:`pipeline.heads.watch.Watched`) and
scores over the folds of a job (:mod:`pipeline.heads.sweep`) and makes its
row: mean accuracy and macro-F1, which scored images it got right
(:func:`correct_string`) and its class probabilities on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.heads.variants import predict_views


@dataclass
class Tally:
    """One variant's fits and scores over the folds of a job, and the row they make."""

    scores: list = field(default_factory=list)  # (accuracy, macro-F1) per scored fold
    correct: list = field(default_factory=list)
    proba: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    seconds: float = 0.0
    peak: float = 0.0
    not_converged: int = 0  # fits that stopped at their solver's iteration limit

    def fitted(self, fit: Any, share: int = 1) -> None:
        """Count one watched fit (:class:`~pipeline.heads.watch.Watched`); ``share``: heads it fitted together.

        A batch's time is shared evenly by its heads; its peak memory is each one's.
        """
        self.seconds += fit.seconds / share
        self.peak = max(self.peak, fit.peak_mib)
        self.not_converged += not fit.converged

    def score(self, head: Any, X_score: np.ndarray, y_score: np.ndarray) -> None:
        predicted = predict_views(head, X_score)
        self.correct.append(np.asarray(predicted) == np.asarray(y_score))
        self.proba.append(class_probabilities(head, X_score))
        self.labels.append(y_score)
        self.scores.append(accuracy_and_macro_f1(y_score, predicted))

    def row(self, head: Any, memmapped: bool, **extra) -> dict:
        accuracy = [a for a, _ in self.scores]
        f1 = [f for _, f in self.scores]
        return {
            "val_accuracy": float(np.mean(accuracy)) if accuracy else None,
            "val_macro_f1": float(np.mean(f1)) if f1 else None,
            "val_accuracy_std": float(np.std(accuracy)) if len(accuracy) > 1 else None,
            "fit_seconds": round(self.seconds, 4),
            "peak_rss_mib": self.peak,
            "features_memmapped": memmapped,
            "not_converged": self.not_converged,
            "n_epochs": getattr(head, "n_epochs_", None),
            "warm_start_from_C": None,
            "val_correct": correct_string(np.concatenate(self.correct)) if self.correct else None,
            "val_proba": _stack(self.proba),
            "scored_labels": np.concatenate(self.labels) if self.labels else None,
            **extra,
        }


def accuracy_and_macro_f1(y_true: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 (``zero_division=0``) over the labels of either, as scikit-learn's metrics give them.

    A sweep scores hundreds of fits on a few hundred images each, where
    ``accuracy_score`` and ``f1_score`` together spend ~1.7 ms a fold checking
    their inputs (~1 s of a default heads stage; ``benchmarks/fold_scores.py``);
    counting takes ~0.03 ms. F1 of a
    class is ``2·TP / (2·TP + FP + FN)`` (0 when the class is in neither), the
    mean over the classes present in ``y_true`` or ``predicted``: scikit-learn's
    definition (``tests/test_tally.py`` compares them).
    """
    y_true, predicted = np.asarray(y_true), np.asarray(predicted)
    labels, codes = np.unique(np.concatenate([y_true, predicted]), return_inverse=True)
    truth, guess = codes[: len(y_true)], codes[len(y_true) :]
    right = truth == guess
    true_positives = np.bincount(truth[right], minlength=len(labels))
    # Per class, true + predicted counts = 2·TP + FN + FP.
    either = np.bincount(truth, minlength=len(labels)) + np.bincount(guess, minlength=len(labels))
    f1 = np.divide(2.0 * true_positives, either, out=np.zeros(len(labels)), where=either > 0)
    return float(np.mean(right)), float(np.mean(f1))


def class_probabilities(head: Any, X: np.ndarray) -> np.ndarray | None:
    """Class probabilities of scored rows, (n, n_classes) float32, for soft voting; None without them.

    Kinds without ``predict_proba`` (SVMs) and views (test-time augmentation) give None.
    """
    if X.ndim != 2 or not hasattr(head, "predict_proba"):
        return None
    return np.asarray(head.predict_proba(X), dtype=np.float32)


def _stack(parts: list) -> np.ndarray | None:
    # Folds in order, like val_correct; None when a fold gave none.
    return None if not parts or any(p is None for p in parts) else np.concatenate(parts)


def correct_string(correct: np.ndarray) -> str:
    """Which scored images a head got right, as one ``0``/``1`` character each (compact in scores.json)."""
    return "".join("1" if right else "0" for right in np.asarray(correct, dtype=bool))
