"""Duplicate images: exact copies are removed, near copies across splits reported.

*Exact* duplicates share their bytes (sha256). :func:`remove_duplicates` keeps
one copy of each: a copy that straddles splits is kept only in the most
held-out split, so no evaluated image is also trained on (leakage), and
repeats within a split are collapsed.

*Near* duplicates (re-encoded, resized or slightly edited copies) have other
bytes. When ``data.near_duplicates`` is set, prepare computes a 64-bit DCT
perceptual hash (pHash) of every image and :func:`cross_split_pairs` reports the
pairs from *different* splits whose hashes differ in at most ``max_distance``
bits. They are suspected leakage for a person to judge, never removed: a
threshold loose enough to catch every edited copy also flags some distinct
images of a uniform background.

The hash is the classic pHash: greyscale, resized to 32×32, 2-D DCT-II, the
8×8 lowest frequencies compared with their median.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import SPLITS

HASH_BITS = 64
_SIDE = 32  # pixels per side the image is reduced to before the DCT
_LOW = 8  # the top-left _LOW × _LOW DCT coefficients make the hash
# Rows of the first split compared with the second at once: bounds memory to
# about _BLOCK × n × 4 bytes while keeping the search one matrix product per block.
_BLOCK = 1024


# --------------------------------------------------------------------------- exact


def remove_duplicates(
    items: Sequence[tuple[Any, Any]],
) -> tuple[list[tuple[Any, Any]], dict[str, int], list[list[str]]]:
    """Drop exact duplicates (same sha256): leakage across splits and repeats within one.

    A duplicate that spans splits is kept only in the most held-out split
    (test, then val, then train), so no test image is also trained on; within a
    split, the first by id is kept.

    Parameters
    ----------
    items : sequence of (Candidate, ImageInfo)
        Anything with ``.id``, ``.class_name`` and ``.split`` (None before
        splitting), paired with anything with ``.sha256``.

    Returns
    -------
    kept : list of (Candidate, ImageInfo), sorted by id
    counts : dict
        ``groups`` (hashes seen more than once), ``removed_within_split``,
        ``removed_cross_split``, ``label_conflicts`` (groups filed under more
        than one class; the kept copy's class wins) and, per pair of splits,
        ``<a>_<b>`` groups straddling them.
    groups : list of list of str
        The ids of each duplicate group, kept one first.
    """
    by_hash: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for item in items:
        by_hash[item[1].sha256].append(item)
    rank = {"test": 0, "val": 1, "train": 2, None: 3}
    kept, groups = [], []
    counts = Counter({"groups": 0, "removed_within_split": 0, "removed_cross_split": 0, "label_conflicts": 0})
    for members in by_hash.values():
        if len(members) == 1:
            kept.append(members[0])
            continue
        members = sorted(members, key=lambda m: (rank[m[0].split], m[0].id))
        keeper = members[0]
        kept.append(keeper)
        counts["groups"] += 1
        if len({m[0].class_name for m in members}) > 1:
            # The same picture under two labels: only a person can say which is right.
            counts["label_conflicts"] += 1
        splits = sorted({m[0].split for m in members if m[0].split}, key=SPLITS.index)
        for a_index, a in enumerate(splits):
            for b in splits[a_index + 1 :]:
                counts[f"{a}_{b}"] += 1
        for dropped in members[1:]:
            same = dropped[0].split == keeper[0].split
            counts["removed_within_split" if same else "removed_cross_split"] += 1
        groups.append([m[0].id for m in members])
    kept.sort(key=lambda item: item[0].id)
    return kept, dict(counts), sorted(groups)


# --------------------------------------------------------------------------- near


@dataclass(frozen=True)
class NearPair:
    """Two images in different splits whose perceptual hashes are close."""

    id_a: str
    split_a: str
    id_b: str
    split_b: str
    distance: int  # Hamming distance of the hashes, 0..64


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    # Orthonormal DCT-II: row k is the k-th cosine basis over _SIDE samples.
    n = np.arange(_SIDE)
    basis = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * _SIDE))
    basis[0] *= 1 / np.sqrt(2)
    return basis * np.sqrt(2 / _SIDE)


def perceptual_hash(pixels: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of an image.

    Parameters
    ----------
    pixels : ndarray of shape (height, width, 3), dtype uint8
        RGB pixels, as :func:`pipeline.images.decode_image` returns them.

    Returns
    -------
    int
        In ``[0, 2**64)``; bit ``i`` is set where low-frequency coefficient ``i``
        (row-major over the 8×8 block) exceeds the block's median.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must have shape (height, width, 3). Received: {pixels.shape}")
    grey = Image.fromarray(pixels).convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS)
    dct = _dct_matrix()
    coefficients = dct @ np.asarray(grey, dtype=np.float64) @ dct.T
    low = coefficients[:_LOW, :_LOW].ravel()
    bits = low > np.median(low)
    return sum(1 << int(i) for i in np.flatnonzero(bits))


def hamming(a: int, b: int) -> int:
    """Number of bits in which two hashes differ."""
    return bin(a ^ b).count("1")


def _bit_matrix(hashes: Sequence[int]) -> np.ndarray:
    values = np.array(hashes, dtype=np.uint64)
    shifts = np.arange(HASH_BITS, dtype=np.uint64)
    return ((values[:, None] >> shifts) & np.uint64(1)).astype(np.float32)


def cross_split_pairs(
    ids: Sequence[str], splits: Sequence[str], hashes: Sequence[int], *, max_distance: int
) -> list[NearPair]:
    """Every pair of images from different splits whose hashes differ in at most ``max_distance`` bits.

    Parameters
    ----------
    ids, splits : sequence of str, length n_images
    hashes : sequence of int, length n_images
        From :func:`perceptual_hash`.
    max_distance : int
        In ``[0, 64]``.

    Returns
    -------
    list of NearPair
        Sorted by distance, then ids; ``split_a`` comes before ``split_b`` in
        train, val, test order.
    """
    if not 0 <= max_distance <= HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS}]. Received: {max_distance!r}")
    if not len(ids) == len(splits) == len(hashes):
        raise ValueError(
            f"ids, splits and hashes must have the same length. Received: {len(ids)}, {len(splits)}, {len(hashes)}"
        )
    members = {s: np.flatnonzero(np.asarray(splits, dtype=object) == s) for s in SPLITS}
    bits = _bit_matrix(hashes) if len(hashes) else np.zeros((0, HASH_BITS), np.float32)
    ones = bits.sum(axis=1)
    pairs = []
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            a, b = members[first], members[second]
            if not len(a) or not len(b):
                continue
            for start in range(0, len(a), _BLOCK):
                rows = a[start : start + _BLOCK]
                # |x xor y| = |x| + |y| - 2 x·y for 0/1 vectors; exact in float32 up to 64.
                distance = ones[rows, None] + ones[None, b] - 2 * (bits[rows] @ bits[b].T)
                for r, c in zip(*np.nonzero(distance <= max_distance)):
                    pairs.append(NearPair(ids[rows[r]], first, ids[b[c]], second, int(round(distance[r, c]))))
    return sorted(pairs, key=lambda p: (p.distance, p.id_a, p.id_b))
