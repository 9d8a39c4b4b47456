"""Coarse-to-fine search of one regularisation setting (C) on a log scale, as CLIP_benchmark's linear probe does.

A kind whose registry entry names a ``search`` setting and whose
``heads.<kind>.refine`` is above 0 is not only fitted at the listed values
(the coarse pass: by default every decade from 1e-6 to 1e4) but then
``refine`` rounds of bisection on the log scale around the best value so
far: half the coarse spacing either side, then a quarter, and so on. Each
round adds at most two fits, so ``refine: 3`` costs six fits more than the grid
and places the optimum within an eighth of a decade (a factor 1.33).

:func:`coarse_to_fine` is the search alone: it asks a callback for the scores
of a batch of values and decides which to try next, so the sweep decides how
a value is fitted (warm-started, over folds) and a test can hand it any
function whose optimum is known.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

# Scores compare as tuples, higher better (accuracy, then macro-F1); equal scores go to the smaller value.
Score = tuple[float, ...]


def round_value(value: float) -> float:
    """A searched value rounded to three significant digits, so that variant ids stay short and stable."""
    return float(f"{value:.3g}")


def coarse_to_fine(
    coarse: Sequence[float], refine: int, score_of: Callable[[list[float]], dict[float, Score]]
) -> dict[float, Score]:
    """Score the coarse values, then bisect ``refine`` times on the log scale around the best.

    The sweep calls it only with two or more coarse values (:func:`pipeline.heads.sweep.searched`).

    Parameters
    ----------
    coarse : sequence of float
        Values > 0 of the first pass (at least one).
    refine : int
        Rounds of bisection; 0 scores the coarse values only.
    score_of : callable
        ``score_of(values)`` → ``{value: score}`` for a batch of values in ascending order.

    Returns
    -------
    dict of float to Score
        Every value tried, with its score.
    """
    values = sorted({float(v) for v in coarse})
    if not values or values[0] <= 0:
        raise ValueError(f"a log-scale search needs values > 0. Received: {list(coarse)}")
    scores = dict(score_of(values))
    logs = [math.log10(v) for v in values]
    # The step starts at half the median spacing of the coarse values (one decade when there is only one).
    gaps = sorted(b - a for a, b in zip(logs, logs[1:]))
    step = (gaps[len(gaps) // 2] if gaps else 1.0) / 2
    for _ in range(refine):
        best = best_value(scores)
        # Within the coarse range: its ends are where the search was told to stop.
        candidates = sorted(
            {c for c in (round_value(best * 10 ** (sign * step)) for sign in (-1, 1)) if values[0] <= c <= values[-1]}
            - set(scores)
        )
        if candidates:
            scores.update(score_of(candidates))
        step /= 2
    return scores


def best_value(scores: dict[float, Score]) -> float:
    """The value with the best score; equal scores go to the smallest value (the most regularised C)."""
    return min(scores, key=lambda value: (tuple(-s for s in scores[value]), value))
