"""A soft vote of the variants the paired test cannot tell from the best, one more candidate of the selection.

On a few hundred images dozens of variants are often indistinguishable from the
winner on validation (a paired McNemar test on the scored images,
:func:`pipeline.selection.scoring.tied`), and which of them wins is close to a
coin toss. :func:`near_equals` averages the class probabilities of the first
``heads.near_equals`` of them in :func:`~pipeline.selection.scoring.rank` order
(the winner first when it gives probabilities), within one feature set and
across feature sets, and enters the mean as one more candidate,
``near-equals/softvote-<n>``. Only variants that give probabilities (logistic
regression, dense) and read a single feature set can be members: combinations
and SVMs are left out, though a combination or an SVM may be the winner the
others are tested against.

Its validation score is the vote's own on the images every variant was scored on,
from the probabilities the heads stage kept (``val_proba.npz``: the val split,
or train+val out of fold under ``heads.cv``), so it competes with every variant
on equal terms; like any feature set's choice it is scored once on test, and it
is exported as one graph like the ensemble (:mod:`pipeline.selection.ensemble`).
The members are picked on those same images, as the winner itself is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.heads.training import SCORED_LABELS, read_val_proba
from pipeline.selection.ensemble import vote
from pipeline.selection.scoring import ALPHA, rank, select_best, tied

log = logging.getLogger(__name__)

#: The near-equals vote's key among the feature sets of the report and the leaderboard.
NEAR_KEY = "near-equals"


def near_equals(all_scores: Sequence[dict], size: int, select_by: str, records, alpha: float = ALPHA) -> dict | None:
    """The soft vote of the ``size`` best variants indistinguishable from the best, or None when fewer than two qualify.

    Parameters
    ----------
    all_scores : sequence of dict
        Every feature set's ``scores.json`` with its ``dir``.
    size : int
        ``heads.near_equals``: at most this many members; below 2, none.
    records : sequence of Record
        The manifest, for the members' test rows.
    alpha : float
        Level of the paired test: a variant is a near-equal when its p-value against the best is at least this.

    Returns
    -------
    dict or None
        As :func:`pipeline.selection.ensemble.soft_vote` returns it; the row's ``params`` hold ``members``,
        ``winner`` (the best variant, ``<feature set>/<variant>``) and ``near_equals`` (how many variants,
        the winner included, the test could not tell apart).
    """
    if size < 2:
        return None
    sets, rows = {}, []
    for scores in all_scores:
        sets[scores["feature_set"]] = (scores, read_val_proba(Path(scores["dir"])))
        rows += [
            {**row, "feature_set": scores["feature_set"]}
            for row in scores["variants"]
            if row.get(f"val_{select_by}") is not None and not row.get("raced_out")
        ]
    if not rows:
        return None
    winner = select_best(rows, select_by)
    labels = sets[winner["feature_set"]][1].get(SCORED_LABELS)
    if not winner.get("val_correct") or labels is None:
        log.info("no near-equals vote: the best variant has no per-image record of its validation answers")
        return None
    near = [r for r in rows if _same(r, winner) or tied(winner, r, alpha)]
    members = []
    for row in sorted(near, key=lambda r: rank(r, select_by)):
        scores, stored = sets[row["feature_set"]]
        if (
            not scores.get("combines")
            and row["variant"] in stored
            and np.array_equal(stored.get(SCORED_LABELS), labels)  # the same images, in the same order
        ):
            members.append((scores, row, stored))
    members = members[:size]
    if len(members) < 2:
        log.info(
            "no near-equals vote: %d variant(s) indistinguishable from %s/%s, %d of them with probabilities",
            len(near) - 1,
            winner["feature_set"],
            winner["variant"],
            len(members),
        )
        return None
    return vote(
        members,
        key=NEAR_KEY,
        variant=f"softvote-{len(members)}",
        select_by=select_by,
        records=records,
        params={"winner": f"{winner['feature_set']}/{winner['variant']}", "near_equals": len(near)},
    )


def _same(row: dict, other: dict) -> bool:
    return (row["feature_set"], row["variant"]) == (other["feature_set"], other["variant"])
