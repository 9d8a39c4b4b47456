"""The cost report: what the sweep took, against running the backbone end to end for every variant.

The backbone_cost stage times each feature set's backbone per image
(:mod:`pipeline.extraction.timing`); :func:`sweep_cost` multiplies it out
(:func:`end_to_end_seconds`) to say what the sweep's variants would have cost
had each read every image through the frozen backbone instead of cached features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def end_to_end_seconds(
    rows: Sequence[dict], *, seconds_per_image: float, n_train: int, n_val: int, cv: int = 0
) -> float:
    """What a feature set's variants would cost if each ran the backbone on every image it reads.

    Per variant: one pass over the training images per epoch it trained (the
    epochs a dense head actually ran; 1 for the other heads, which need each
    image's features once) plus one pass over the validation images to score
    it. With ``cv = k`` the k fold fits and the final refit read, over the
    N = train + val images, ``epochs × k × N + N`` images in all.

    Parameters
    ----------
    rows : sequence of dict
        Score rows of ``heads/<key>/scores.json`` (``n_epochs`` is read).
    seconds_per_image : float
    n_train, n_val : int
        Images in the train and val splits.

    Returns
    -------
    float
        Seconds.
    """
    images = 0
    for row in rows:
        epochs = row.get("n_epochs") or 1
        images += epochs * cv * (n_train + n_val) + n_train + n_val if cv else epochs * n_train + n_val
    return images * seconds_per_image


def sweep_cost(all_scores: Sequence[dict], costs: dict, test_rows: dict[str, int]) -> dict:
    """How long the sweep took, and what its variants would cost end to end through the backbone.

    Parameters
    ----------
    all_scores : sequence of dict
        The ``scores.json`` of every feature set.
    costs : dict
        ``{key: {"seconds_per_image": ...}}`` from stage backbone_cost.
    test_rows : dict
        Test images per feature set (for the one-off extraction cost).

    Returns
    -------
    dict
        ``variants``, ``fitted`` and ``reused`` (this run of the heads stages),
        ``heads_stage_seconds`` (their wall time, imports included),
        ``fit_seconds`` (fitting time of every variant, reused ones as first
        fitted), ``end_to_end_seconds`` (:func:`end_to_end_seconds`
        summed over feature sets), ``extraction_seconds`` (the backbone once over
        every image), ``seconds_per_image_mean``, ``end_to_end_over_fit`` (how
        many times the fitting time end to end would take) and the
        per-feature-set numbers.

    Raises
    ------
    ValueError
        If a feature set has no backbone timing.
    """
    per_set, totals = {}, dict.fromkeys(("variants", "fitted", "reused"), 0)
    for scores in all_scores:
        key, rows, sweep = scores["feature_set"], scores["variants"], scores.get("sweep", {})
        members = scores.get("combines") or [key]  # a combination reads every member's backbone pass
        for member in members:
            if member not in costs:
                raise ValueError(
                    f"no backbone timing for feature set {member!r} in the costs file "
                    f"(it has {sorted(costs)}); rerun stage backbone_cost"
                )
        seconds_per_image = sum(costs[member]["seconds_per_image"] for member in members)
        n = scores["rows"]
        per_set[key] = {
            "variants": len(rows),
            "fitted": sweep.get("fitted", len(rows)),
            "reused": sweep.get("reused", 0),
            "heads_stage_seconds": sweep.get("stage_seconds"),
            "fit_seconds": round(sum(r["fit_seconds"] + r.get("preprocess_seconds", 0.0) for r in rows), 3),
            "seconds_per_image": seconds_per_image,
            "end_to_end_seconds": round(
                end_to_end_seconds(
                    rows, seconds_per_image=seconds_per_image, n_train=n["train"], n_val=n["val"], cv=sweep.get("cv", 0)
                ),
                1,
            ),
            # A combination adds no backbone pass: its members' extraction is counted once, under them.
            "extraction_seconds": 0.0
            if scores.get("combines")
            else round(seconds_per_image * (n["train"] + n["val"] + test_rows[key]), 1),
        }
        for name in totals:
            totals[name] += per_set[key][name]
    sums = {
        name: round(sum(p[name] or 0.0 for p in per_set.values()), 3)
        for name in ("heads_stage_seconds", "fit_seconds", "end_to_end_seconds", "extraction_seconds")
    }
    mean_spi = float(np.mean([p["seconds_per_image"] for p in per_set.values()]))
    measured_at = sorted({c["measured_at"] for c in costs.values() if c.get("measured_at")})
    ratio = sums["end_to_end_seconds"] / sums["fit_seconds"] if sums["fit_seconds"] else None
    return {
        **totals,
        **sums,
        "seconds_per_image_mean": mean_spi,
        "measured_at": measured_at,
        "end_to_end_over_fit": None if ratio is None else round(ratio, 1),
        "feature_sets": per_set,
    }
