"""Pooling stored rows to one vector per image: the one definition every reader uses.

Stores hold what the cut gives, unpooled; heads read vectors. The poolings are
those of ``heads.pooling`` (:data:`pipeline.config.POOLINGS`), plus ``none``
for the rows themselves. What a row is decides which apply (:func:`applies`):

- a **map** ``(h, w, c)`` (a convolutional cut): ``avg`` / ``max`` — global
  average / max over the spatial axes, ``(n, c)``; ``avgmax`` — both,
  concatenated, ``(n, 2c)``; ``flatten`` — every value, ``(n, h·w·c)``;
- a **token summary** ``(2, d)`` or ``(1, d)`` (a ViT-like cut of a keras_hub
  preset, :class:`pipeline.backbones.hub.TokenSummary`: the class token, then
  the mean of the patch tokens; without a class token, the mean alone):
  ``cls`` — the class token, ``(n, d)``; ``mean`` — the mean of the patch
  tokens, ``(n, d)``; ``cls+mean`` — both, concatenated, ``(n, 2d)``;
- a **vector** ``(c,)`` is returned as it is by every pooling.

The exported model applies the same poolings as Keras layers
(:func:`pipeline.export.layers.apply_pooling`). An unknown name, or one that
does not apply to the rows, raises, naming the valid ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.config import MAP_POOLINGS, POOLINGS, TOKEN_POOLINGS

#: Every pooling a reader accepts: the rows themselves, or one of heads.pooling.
READ_POOLINGS = ("none", *POOLINGS)


def _mean(X, spatial, xp):
    return X.astype("float32").mean(axis=spatial)


def _max(X, spatial, xp):
    return X.max(axis=spatial).astype("float32")


def _avgmax(X, spatial, xp):
    return xp.concatenate([_mean(X, spatial, xp), _max(X, spatial, xp)], axis=1)


def _flatten(X, spatial, xp):
    return X.reshape((X.shape[0], math.prod(X.shape[1:]))).astype("float32")  # not -1: an empty block too


def _class_token(X, spatial, xp):
    return X[:, 0, :].astype("float32")


def _patch_mean(X, spatial, xp):
    return X[:, -1, :].astype("float32")  # the last row of a summary, with a class token or without


def _class_and_mean(X, spatial, xp):
    return X.reshape((X.shape[0], math.prod(X.shape[1:]))).astype("float32")  # not -1: an empty block too


# One function per name of heads.pooling (tests/test_store.py checks that the two lists agree).
_POOLERS: dict[str, Callable] = {
    "avg": _mean,
    "max": _max,
    "avgmax": _avgmax,
    "flatten": _flatten,
    "cls": _class_token,
    "mean": _patch_mean,
    "cls+mean": _class_and_mean,
}


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`READ_POOLINGS`; else ``ValueError`` naming the valid ones."""
    if pooling not in READ_POOLINGS:
        raise ValueError(f"pooling must be one of {list(READ_POOLINGS)}. Received: {pooling!r}")
    return pooling


def row_kind(feature_shape: Sequence[int]) -> str:
    """``vector``, ``tokens`` (a token summary) or ``map``: what a stored row of ``feature_shape`` is."""
    return {1: "vector", 2: "tokens"}.get(len(feature_shape), "map")


def applicable(feature_shape: Sequence[int]) -> tuple[str, ...]:
    """The poolings of ``heads.pooling`` that apply to rows of ``feature_shape``."""
    kind = row_kind(feature_shape)
    if kind == "vector":
        return POOLINGS
    if kind == "map":
        return MAP_POOLINGS
    # A summary without a class token has one row, the patch mean.
    return TOKEN_POOLINGS if feature_shape[0] == 2 else ("mean",)


def applies(pooling: str, feature_shape: Sequence[int]) -> bool:
    """Whether ``pooling`` can pool rows of ``feature_shape`` (``none`` always can)."""
    return check_pooling(pooling) == "none" or pooling in applicable(feature_shape)


def _require(pooling: str, feature_shape: Sequence[int]) -> None:
    if not applies(pooling, feature_shape):
        what = {"map": "a map", "tokens": "a token summary"}[row_kind(feature_shape)]
        raise ValueError(
            f"pooling {pooling!r} does not apply to rows of shape {tuple(feature_shape)} ({what}); "
            f"the poolings that do: {list(applicable(feature_shape))}"
        )


def pool(X, pooling: str, *, xp=np):
    """Pool a block of rows ``(n, *row)`` (numpy, or dask with ``xp=dask.array``).

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
    _require(pooling, X.shape[1:])
    return _POOLERS[pooling](X, tuple(range(1, X.ndim - 1)), xp)


def pooled_width(feature_shape: Sequence[int], pooling: str) -> int:
    """Features per image after ``pooling`` of rows of shape ``feature_shape``."""
    check_pooling(pooling)
    if pooling == "none":
        return math.prod(feature_shape)
    if len(feature_shape) == 1:
        return int(feature_shape[0])
    _require(pooling, feature_shape)
    if pooling in ("flatten", "cls+mean"):
        return math.prod(feature_shape)
    return int(feature_shape[-1]) * (2 if pooling == "avgmax" else 1)
