"""Racing: stopping a variant once the images it has been scored on say it cannot be the best.

Under cross-validation every fold scores a variant on images it was not fitted
on. After each fold, :func:`dominated` asks how unlikely the variant's right
and wrong answers on the images scored so far are if it were as accurate as
the leader (the best so far: :func:`leader_of`): a one-sided exact McNemar
(binomial) test on the images exactly one of the two got right, the same
paired test selection uses to count the variants indistinguishable from the
winner (:mod:`pipeline.selection.scoring`). The sweep
(:mod:`pipeline.heads.sweep`) stops a variant whose p-value falls below
``heads.race``; whole folds are compared, never partly trained heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.heads.tally import Tally


@dataclass(frozen=True)
class Leader:
    """The variant racing compares against: the best complete one so far (every scored image, in fold order)."""

    variant: str
    val_correct: str


def leader_of(rows: Sequence[dict]) -> Leader | None:
    """The complete row (not raced out) with the best validation accuracy; ties to the first; None if none."""
    complete = [
        r for r in rows if r.get("val_correct") and not r.get("raced_out") and r.get("val_accuracy") is not None
    ]
    if not complete:
        return None
    best = max(complete, key=lambda r: r["val_accuracy"])
    return Leader(best["variant"], best["val_correct"])


def dominated(tally: Tally, leader: Leader) -> float:
    """One-sided exact McNemar p-value that the tallied variant is less accurate than ``leader``.

    On the images the variant has been scored on so far (the first folds, the
    same images in the same order as the leader's ``val_correct``): among the
    images exactly one of the two got right, how unlikely so few are the
    variant's if both were equally accurate.
    """
    from scipy.stats import binom

    mine = np.concatenate(tally.correct)
    theirs = np.frombuffer(leader.val_correct.encode(), dtype=np.uint8)[: len(mine)] == ord("1")
    only_mine, only_theirs = int(np.sum(mine & ~theirs)), int(np.sum(theirs & ~mine))
    if only_mine + only_theirs == 0:
        return 1.0
    return float(binom.cdf(only_mine, only_mine + only_theirs, 0.5))
