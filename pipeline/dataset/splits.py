"""Splitting images into train, val and test: stratified by class, by ratios, seeded.

:func:`stratified_split` splits a source that comes unsplit; :func:`draw_from_train`
draws the split a pre-split source lacks out of its training images (the policy
is in :mod:`pipeline.dataset.layouts`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from pipeline.config import SPLITS, SplitRatios


def stratified_split(labels: Sequence[Hashable], ratios: SplitRatios, seed: int) -> np.ndarray:
    """Assign each item to train/val/test, class by class, by ratios.

    Parameters
    ----------
    labels : sequence of int or str, length n_samples
        Class of each item; class names give error messages that name the class.
    ratios : SplitRatios
    seed : int

    Returns
    -------
    ndarray of shape (n_samples,), dtype object
        'train', 'val' or 'test' per item. Every split with a non-zero ratio gets
        at least one item of every class; the assignment depends only on the
        labels' order, the ratios and the seed.

    Raises
    ------
    ValueError
        If a class has fewer items than splits with a non-zero ratio.
    """
    wanted = [(name, getattr(ratios, name)) for name in SPLITS if getattr(ratios, name) > 0]
    return _stratified(
        labels,
        wanted,
        seed,
        why=f"the split ratios {dict(wanted)}",
        fix="add images to it, remove its folder, or set a ratio in data.split to 0",
    )


def draw_from_train(labels: Sequence[Hashable], split: str, fraction: float, seed: int) -> np.ndarray:
    """Draw ``split`` out of training images, class by class: ``fraction`` of each class, at least one.

    Parameters
    ----------
    labels : sequence of int or str, length n_train
        Class of each training image.
    split : str
        The split drawn ('val' or 'test').
    fraction : float
        Share of each class's images drawn, in (0, 1).
    seed : int

    Returns
    -------
    ndarray of shape (n_train,), dtype object
        'train' or ``split`` per image; depends only on the labels' order, ``fraction`` and the seed.

    Raises
    ------
    ValueError
        If a class has fewer than 2 training images (one must stay for training).
    """
    return _stratified(
        labels,
        [("train", 1.0 - fraction), (split, fraction)],
        seed,
        why=f"drawing {split} from train/ ({fraction:.1%} of each class)",
        fix=f"add training images to it, or give the source a {split}/ folder",
    )


def _stratified(
    labels: Sequence[Hashable], wanted: Sequence[tuple[str, float]], seed: int, *, why: str, fix: str
) -> np.ndarray:
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = len(members)
        if n < len(wanted):
            raise ValueError(
                f"class {label.item()!r} has {n} image(s); {why} needs at least {len(wanted)} per class ({fix})"
            )
        counts = _allocate(n, [r for _, r in wanted])
        order = members[rng.permutation(n)]
        start = 0
        for (name, _), count in zip(wanted, counts):
            out[order[start : start + count]] = name
            start += count
    return out


def _allocate(n: int, ratios: Sequence[float]) -> list[int]:
    # Largest remainder, then make sure every split gets at least one item.
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i, c in enumerate(counts):
        if c == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] = 1
    return counts
