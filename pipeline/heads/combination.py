"""Feature sets combined from the cache: heads on the concatenation of several stores' rows (``heads.combine``).

A combination such as ``[lite0_top, lite0_block6]`` (two cuts of one
backbone) or ``[lite0_top, lite1_top]`` (two backbones) adds no backbone
pass: its rows are the member stores' rows of the same images, pooled as the
variant asks and concatenated feature-wise, in the members' order. It is
trained and selected as one more feature set, keyed ``lite0_top+lite0_block6``
(:func:`combination_key`). Rows are joined by content hash, so two stores
give the same row order for the same manifest; :func:`concatenate` checks it
and refuses sets of other images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.store.reader import FeatureSet, open_feature_set, open_store, provenance_of

#: Joins member keys into a combination's key (not a character a feature set key may hold).
SEPARATOR = "+"


def combination_key(members: Sequence[str]) -> str:
    """The key of a combination: its members' keys joined by ``+``, in order."""
    return SEPARATOR.join(members)


def concatenate(parts: Sequence[FeatureSet], names: Sequence[str]) -> FeatureSet:
    """One feature set whose rows are the parts' rows side by side.

    Parameters
    ----------
    parts : sequence of FeatureSet
        Each ``X`` of shape (n_samples, width_i), rows of the same images in the same order.
    names : sequence of str
        The parts' feature set keys, for messages.

    Returns
    -------
    FeatureSet
        ``X`` of shape (n_samples, sum of widths); labels, ids and hashes of the first part.

    Raises
    ------
    ValueError
        If two parts hold other images, or the same images in another order or with other labels.
    """
    first = parts[0]
    for name, part in zip(names[1:], parts[1:]):
        if len(part.sha256) != len(first.sha256) or not np.array_equal(part.sha256, first.sha256):
            extra = sorted(set(map(str, part.ids)) ^ set(map(str, first.ids)))[:3]
            raise ValueError(
                f"heads.combine [{', '.join(names)}]: the rows of {name} ({len(part.sha256)} images) do not align "
                f"with those of {names[0]} ({len(first.sha256)} images)"
                + (f"; images in one but not the other: {extra}" if extra else ": same images in another order")
                + ". Combine feature sets extracted from the same manifest"
            )
        if not np.array_equal(part.y, first.y):
            raise ValueError(
                f"heads.combine [{', '.join(names)}]: {name} labels the images otherwise than "
                f"{names[0]}; combine feature sets read with the same manifest"
            )
    X = np.concatenate([np.asarray(p.X, dtype=np.float32) for p in parts], axis=1)
    provenance = {"combines": list(names), "members": [p.provenance for p in parts]}
    return FeatureSet(X, first.y, first.ids, first.sha256, first.classes, provenance)


def open_combination(
    stores: Sequence[Path],
    names: Sequence[str],
    split: str,
    *,
    manifest,
    pooling: str,
    expect: Sequence[dict] | None = None,
) -> FeatureSet:
    """One split of a combination, read from its member stores and concatenated (:func:`concatenate`)."""
    parts = [
        open_feature_set(store, split, manifest=manifest, pooling=pooling, expect=None if expect is None else expect[i])
        for i, store in enumerate(stores)
    ]
    return concatenate(parts, names)


def combined_provenance(stores: Sequence[Path]) -> dict:
    """Provenance of a combination for reports: members' backbones, weights and cuts joined by ``+``."""
    members = [provenance_of(open_store(store)) for store in stores]
    joined = {field: SEPARATOR.join(str(m.get(field)) for m in members) for field in ("backbone", "weights", "cut")}
    # The deepest member decides how deep the combination reaches.
    deepest = max(members, key=lambda m: m["cut_index"] / max(1, m["n_layers"] - 1))
    return {
        **joined,
        "cut_index": deepest["cut_index"],
        "n_layers": deepest["n_layers"],
        "combines": [Path(store).stem for store in stores],
        "members": members,
    }
