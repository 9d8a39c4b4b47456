"""Reading a store's arrays back to prove them: chunk presence, decoding, values, statistics.

A store is marked complete only after :func:`array_statistics` has read every
chunk of its feature arrays back (zstd checksums make flipped bytes fail to
decode; NaN and Inf are refused) and recorded per-split statistics;
``shoulders verify`` (:mod:`pipeline.store.verify`) later recomputes them with
the same function, so equal data gives equal numbers exactly, and compares.
:func:`missing_chunks` finds chunk files that are not there: zarr would read
them back as zeros rather than fail.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np
import zarr

from pipeline.store import locations
from pipeline.store.layout import StoreError
from pipeline.store.locations import Location


def array_statistics(X: zarr.Array, where: str) -> dict[str, float]:
    """Read every chunk of ``X`` (rows first) back; refuse undecodable chunks and non-finite values.

    Returns
    -------
    dict
        ``rows``, ``mean``, ``min``, ``max`` over every value.

    Raises
    ------
    StoreError
        Naming the chunk (its first row) that does not decode or holds NaN/Inf.
    """
    chunk_rows = X.chunks[0]
    total = 0.0
    count = 0
    lo, hi = math.inf, -math.inf
    for index, start in enumerate(range(0, X.shape[0], chunk_rows)):
        stop = min(start + chunk_rows, X.shape[0])
        try:
            block = np.asarray(X[start:stop], dtype=np.float32)
        except Exception as error:  # noqa: BLE001 - zarr/numcodecs raise several types for bad bytes
            raise StoreError(f"{where}: chunk {index} (rows {start}-{stop - 1}) is corrupt: "
                             f"{type(error).__name__}: {error}") from error
        finite = np.isfinite(block)
        if not finite.all():
            bad = int((~finite).reshape(len(block), -1).any(axis=1).sum())
            raise StoreError(f"{where}: chunk {index} (rows {start}-{stop - 1}): {bad} row(s) contain NaN or Inf")
        total += float(block.sum(dtype=np.float64))
        count += block.size
        lo, hi = min(lo, float(block.min(initial=np.inf))), max(hi, float(block.max(initial=-np.inf)))
    return {"rows": int(X.shape[0]), "mean": total / count if count else 0.0,
            "min": lo if count else 0.0, "max": hi if count else 0.0}


def statistics_problems(X: zarr.Array, where: str, recorded: Optional[dict]) -> list[str]:
    """What is wrong with ``X`` against the statistics recorded at completion (empty: nothing)."""
    try:
        now = array_statistics(X, where)
    except StoreError as error:
        return [str(error)]
    if recorded is None:
        return [f"{where}: no statistics recorded at completion"]
    if now != {k: recorded.get(k) for k in now}:
        return [f"{where}: {now['rows']} rows with mean {now['mean']:.6g}, but completion recorded "
                f"{recorded.get('rows')} rows with mean {recorded.get('mean')}: the data changed since"]
    return []


def missing_chunks(array: zarr.Array, folder: Location) -> list[str]:
    """A line naming the chunks of ``array`` that are not stored under ``folder`` (its directory)."""
    grid = [range(math.ceil(s / c)) for s, c in zip(array.shape, array.chunks)]
    missing = [coords for coords in itertools.product(*grid)
               if not locations.exists(locations.join(folder, array.metadata.encode_chunk_key(coords)))]
    if not missing:
        return []
    return [f"{len(missing)} chunk(s) missing on disk, first at chunk {missing[0]}"]
