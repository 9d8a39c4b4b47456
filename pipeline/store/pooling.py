"""Pooling a stored map to one vector per image: the one definition every reader uses.

Stores hold the unpooled map of the cut layer, ``(n, h, w, c)``; heads read
vectors. The poolings are those of ``heads.pooling`` (:data:`pipeline.config.POOLINGS`),
plus ``none`` for the map itself:

- ``avg`` / ``max`` — global average / max over the spatial axes, ``(n, c)``;
- ``avgmax`` — both, concatenated, ``(n, 2c)``;
- ``flatten`` — every value, ``(n, h·w·c)``;

a cut that is already a vector per image, ``(n, c)``, is returned as it is by
every pooling. The exported model applies the same poolings as Keras layers
(:func:`pipeline.export.layers.apply_pooling`). An unknown name raises, naming
the valid ones.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from pipeline.config import POOLINGS

#: Every pooling a reader accepts: the map itself, or one of heads.pooling.
READ_POOLINGS = ("none", *POOLINGS)


def _mean(X, spatial, xp):
    return X.astype("float32").mean(axis=spatial)


def _max(X, spatial, xp):
    return X.max(axis=spatial).astype("float32")


def _avgmax(X, spatial, xp):
    return xp.concatenate([_mean(X, spatial, xp), _max(X, spatial, xp)], axis=1)


def _flatten(X, spatial, xp):
    return X.reshape((X.shape[0], -1)).astype("float32")


# One function per name of heads.pooling (tests/test_store.py checks that the two lists agree).
_POOLERS: dict[str, Callable] = {"avg": _mean, "max": _max, "avgmax": _avgmax, "flatten": _flatten}


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`READ_POOLINGS`; else ``ValueError`` naming the valid ones."""
    if pooling not in READ_POOLINGS:
        raise ValueError(f"pooling must be one of {list(READ_POOLINGS)}. Received: {pooling!r}")
    return pooling


def pool(X, pooling: str, *, xp=np):
    """Pool a block of maps ``(n, *spatial, c)`` (numpy, or dask with ``xp=dask.array``).

    Returns
    -------
    array of shape (n, width), float32 (see :func:`pooled_width`); the block
    itself for ``none``.
    """
    check_pooling(pooling)
    if pooling == "none":
        return X
    if X.ndim == 2:  # the cut is already a vector per image: nothing to pool
        return X.astype("float32")
    return _POOLERS[pooling](X, tuple(range(1, X.ndim - 1)), xp)


def pooled_width(feature_shape: Sequence[int], pooling: str) -> int:
    """Features per image after ``pooling`` of rows of shape ``feature_shape``."""
    check_pooling(pooling)
    if pooling == "none" or pooling == "flatten":
        return math.prod(feature_shape)
    if len(feature_shape) == 1:
        return int(feature_shape[0])
    return int(feature_shape[-1]) * (2 if pooling == "avgmax" else 1)
