"""What a grid of fits computes once per training matrix: kept by the matrix's identity, for the last few.

A search fits one training matrix (a memory map shared by the sweep) at many C;
the linear SVM's thin QR (:mod:`pipeline.heads.linear_svm`) and the RBF SVM's
kernel matrix (:mod:`pipeline.heads.kernel_svm`) depend on the matrix alone
and cost more than most of those fits. A matrix is recognised by identity,
through a weak reference, so that a new array at a reused address is not
mistaken for it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class MatrixCache:
    """The results of ``compute`` for the last ``kept`` (matrix, key) pairs."""

    def __init__(self, kept: int):
        self.kept = kept
        self._entries: dict[tuple[int, Hashable], tuple[weakref.ref, Any]] = {}

    def get(self, matrix: object, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` for ``matrix`` and ``key``, computed once while the matrix is alive and recent."""
        entry = self._entries.get((id(matrix), key))
        if entry is not None and entry[0]() is matrix:
            return entry[1]
        value = compute()
        try:
            reference = weakref.ref(matrix)
        except TypeError:  # an object without weak references: not cached
            return value
        while len(self._entries) >= self.kept:
            self._entries.pop(next(iter(self._entries)))
        self._entries[(id(matrix), key)] = (reference, value)
        return value
