"""A soft-voting ensemble of the best heads of several feature sets, selected and scored like any feature set.

:func:`soft_vote` takes, for each single feature set (combinations aside),
its best variant on validation among those that give class probabilities
(logistic regression, dense), ranks the feature sets by that variant, and
averages the probabilities of the first ``heads.ensemble`` of them. Its
validation score comes from the probabilities the heads stage kept for the
scored images (``val_proba.npz``: val, or train+val out of fold), so the
ensemble is chosen on the same images, the same way, as every variant; it is
scored once on test like a feature set's choice. No backbone pass is added:
the members read their own cached features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from pipeline.heads.combination import SEPARATOR, concatenate
from pipeline.heads.saved import load_head
from pipeline.heads.sweep import correct_string
from pipeline.heads.training import SCORED_LABELS, read_val_proba
from pipeline.provenance import features_identity
from pipeline.selection.scoring import rank, select_best
from pipeline.store.reader import open_feature_set

log = logging.getLogger(__name__)

#: The ensemble's key among the feature sets of the report and the leaderboard.
ENSEMBLE_KEY = "ensemble"


class SoftVote:
    """Mean class probabilities of fitted heads, each reading its own columns of the concatenated rows.

    Parameters
    ----------
    members : sequence of fitted estimators with ``predict_proba``
    widths : sequence of int
        How many columns of ``X`` each member reads, in order.
    """

    def __init__(self, members: Sequence, widths: Sequence[int]):
        self.members = list(members)
        self.widths = list(widths)
        self.classes_ = np.asarray(self.members[0].classes_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """X : ndarray of shape (n_samples, sum(widths)) → (n_samples, n_classes)."""
        bounds = np.cumsum([0, *self.widths])
        return np.mean([m.predict_proba(X[:, a:b]) for m, a, b in zip(self.members, bounds[:-1], bounds[1:])], axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def soft_vote(all_scores: Sequence[dict], size: int, select_by: str, records) -> dict | None:
    """The ensemble of the ``size`` best feature sets' best probabilistic heads, or None when fewer than two qualify.

    Parameters
    ----------
    all_scores : sequence of dict
        Every feature set's ``scores.json`` with its ``dir``.
    size : int
        ``heads.ensemble``.
    records : sequence of Record
        The manifest, for the members' test rows.

    Returns
    -------
    dict or None
        ``row`` (a score row: ``val_accuracy``, ``val_macro_f1``, ``val_correct``,
        ``selection``, ``params.members``), ``estimator`` (:class:`SoftVote`),
        ``test`` (the concatenated members' test rows) and ``provenance``.
    """
    if size < 2:
        return None
    candidates = []
    for scores in all_scores:
        if scores.get("combines"):
            continue
        stored = read_val_proba(Path(scores["dir"]))
        rows = [r for r in scores["variants"] if r["variant"] in stored and r.get(f"val_{select_by}") is not None]
        if rows and SCORED_LABELS in stored:
            best = select_best(rows, select_by)
            candidates.append((scores, {**best, "feature_set": scores["feature_set"]}, stored))
    candidates.sort(key=lambda c: rank(c[1], select_by))
    if candidates:
        # Members must have been scored on the same images, the same way, as the best of them.
        first = candidates[0]
        candidates = [
            c
            for c in candidates
            if c[1].get("selection") == first[1].get("selection")
            and np.array_equal(c[2][SCORED_LABELS], first[2][SCORED_LABELS])
        ]
    members = candidates[:size]
    if len(members) < 2:
        log.info("no ensemble: fewer than 2 feature sets have a head with probabilities scored the same way")
        return None
    return vote(members, key=ENSEMBLE_KEY, variant=f"softvote-{len(members)}", select_by=select_by, records=records)


def vote(
    members: Sequence[tuple[dict, dict, dict]],
    *,
    key: str,
    variant: str,
    select_by: str,
    records,
    params: dict | None = None,
) -> dict:
    """The soft vote of ``members`` as one candidate: its score row, estimator, test rows and provenance.

    Parameters
    ----------
    members : sequence of (scores, row, stored)
        Each member's feature set ``scores.json`` (with its ``dir``), its score row and its feature set's
        ``val_proba.npz`` (:func:`~pipeline.heads.training.read_val_proba`), all scored on the same images.
        Two members may read the same feature set.
    key, variant : str
        The candidate's feature set key and variant id on the leaderboard.
    params : dict, optional
        Added to the row's ``params`` beside ``members``.

    Returns
    -------
    dict
        As :func:`soft_vote` returns it.
    """
    labels = members[0][2][SCORED_LABELS]
    mean = np.mean([stored[row["variant"]] for _, row, stored in members], axis=0)
    predicted = mean.argmax(axis=1)
    names = [f"{row['feature_set']}/{row['variant']}" for _, row, _ in members]
    row = {
        "variant": variant,
        "kind": "ensemble",
        "pooling": SEPARATOR.join(r["pooling"] for _, r, _ in members),
        "standardize": True,
        "pca": None,
        "params": {"members": names, **(params or {})},
        "val_accuracy": float(accuracy_score(labels, predicted)),
        "val_macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "val_correct": correct_string(predicted == labels),
        "selection": members[0][1].get("selection"),
        "fit_seconds": 0.0,
        "feature_set": key,
    }
    heads, tests, opened = [], [], {}
    for scores, pick, _ in members:
        heads.append(load_head(Path(scores["dir"]), pick))
        where = (scores["feature_set"], pick["pooling"])
        if where not in opened:  # members on one feature set and pooling read the same rows
            opened[where] = open_feature_set(
                scores["store"],
                "test",
                manifest=records,
                pooling=pick["pooling"],
                expect=features_identity(scores["identity"]),
            )
        tests.append(opened[where])
    test = concatenate(tests, [s["feature_set"] for s, _, _ in members])
    sets = list({s["feature_set"]: s for s, _, _ in members}.values())  # each feature set once, in order
    provenance = {
        field: SEPARATOR.join(str(s["provenance"].get(field)) for s in sets) for field in ("backbone", "weights", "cut")
    }
    deepest = max((s["provenance"] for s in sets), key=lambda p: p["cut_index"] / max(1, p["n_layers"] - 1))
    provenance.update(
        cut_index=deepest["cut_index"], n_layers=deepest["n_layers"], members=[s["feature_set"] for s in sets]
    )
    log.info("%s/%s of %s: val %s %.4f", key, variant, ", ".join(names), select_by, row[f"val_{select_by}"])
    return {
        "row": row,
        "estimator": SoftVote(heads, [t.X.shape[1] for t in tests]),
        "test": test,
        "provenance": provenance,
    }
