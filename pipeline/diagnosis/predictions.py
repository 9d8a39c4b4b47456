"""Per-image predictions of the chosen model on val and test, with probabilities, and what they show.

Probabilities are computed as the exported model's are: the head's own, or for
heads without them (SVMs) temperature scaling fitted on validation, which keeps
the predicted class (:func:`calibrated`; the export stage does the same, but
importing it here would make this stage depend on the backbones). Nothing here chooses anything, so
reading test again adds no selection on test: it is the same head evaluate scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.diagnosis.chosen import ChosenHead
from pipeline.manifest import Record


@dataclass(frozen=True)
class Predictions:
    """One split's predictions.

    Attributes
    ----------
    split : str
    records : list of Record
        The split's images, in the rows' order.
    y : ndarray of shape (n,)
        Given labels.
    proba : ndarray of shape (n, n_classes)
        Probability of every class of the manifest (0 for a class the head never saw).
    classes : tuple of str
    """

    split: str
    records: list
    y: np.ndarray
    proba: np.ndarray
    classes: tuple

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)


def full_proba(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class of the manifest, shape (n, n_classes)."""
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(estimator.classes_)] = estimator.predict_proba(X)
    return proba


def calibrated(estimator, X_val: np.ndarray, y_val: np.ndarray):
    """The head if it has ``predict_proba``, else the frozen head with a temperature fitted on validation."""
    if hasattr(estimator, "predict_proba"):
        return estimator
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    # Nothing is refitted, so one "fold" of every validation image (5 folds would refuse small classes).
    everything = [(np.arange(len(y_val)), np.arange(len(y_val)))]
    return CalibratedClassifierCV(FrozenEstimator(estimator), method="temperature", cv=everything).fit(X_val, y_val)


def predict_splits(chosen: ChosenHead, records: Sequence[Record], splits=("val", "test")) -> list[Predictions]:
    """The chosen head's probabilities on each split (calibrated on val where it has none of its own)."""
    by_id = {r.id: r for r in records}
    opened = {split: chosen.features(split, records) for split in splits}
    val = opened["val"] if "val" in opened else chosen.features("val", records)
    estimator = chosen.estimator
    if not hasattr(estimator, "predict_proba"):
        if len(val.y) == 0:
            raise ValueError(
                f"{chosen.feature_set}: the validation split is empty, and {chosen.row['variant']} "
                "has no probabilities of its own: they are calibrated on validation"
            )
        estimator = calibrated(estimator, np.asarray(val.X), val.y)
    out = []
    for split, fs in opened.items():
        X = np.asarray(fs.X)
        proba = full_proba(estimator, X, len(fs.classes)) if len(X) else np.zeros((0, len(fs.classes)))
        out.append(Predictions(split, [by_id[i] for i in fs.ids], fs.y, proba, fs.classes))
    return out


def predict_ensemble(
    members: Sequence[ChosenHead], records: Sequence[Record], splits=("val", "test")
) -> list[Predictions]:
    """The soft vote of ``members`` on each split: the mean of their probabilities, as evaluate scores it.

    Each member reads its own store and pooling; rows are matched by image id.
    """
    per_member = [{p.split: p for p in predict_splits(member, records, splits)} for member in members]
    out = []
    for split in splits:
        first = per_member[0][split]
        order = [r.id for r in first.records]
        stacked = []
        for predictions in per_member:
            p = predictions[split]
            row_of = {r.id: i for i, r in enumerate(p.records)}
            if set(row_of) != set(order):
                raise ValueError(f"the ensemble's members read different {split} images; rerun `dvc repro`")
            stacked.append(p.proba[[row_of[i] for i in order]])
        out.append(Predictions(split, first.records, first.y, np.mean(stacked, axis=0), first.classes))
    return out


def prediction_rows(predictions: Sequence[Predictions], feature_set: str, variant: str) -> list[dict]:
    """One CSV row per image: id, path, split, true and predicted class, confidence, every class's probability."""
    rows = []
    for p in predictions:
        for record, y, proba in zip(p.records, p.y, p.proba):
            guess = int(proba.argmax())
            rows.append(
                {
                    "id": record.id,
                    "path": record.path,
                    "sha256": record.sha256,
                    "split": p.split,
                    "true": p.classes[y],
                    "predicted": p.classes[guess],
                    "confidence": round(float(proba[guess]), 4),
                    "correct": bool(guess == y),
                    "feature_set": feature_set,
                    "variant": variant,
                    **{f"p_{name}": round(float(v), 4) for name, v in zip(p.classes, proba)},
                }
            )
    return rows


def confused_pairs(predictions: Sequence[Predictions], top: int) -> list[dict]:
    """The most frequent (true, predicted) pairs among the errors, most frequent first."""
    counts: Counter = Counter()
    for p in predictions:
        for y, guess in zip(p.y, p.predicted):
            if y != guess:
                counts[(p.classes[y], p.classes[guess])] += 1
    return [
        {"true": t, "predicted": g, "images": n}
        for (t, g), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    ]
