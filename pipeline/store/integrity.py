"""Proving a store's rows: a digest per chunk bound to its position, checked when written, read and verified.

When an extraction finishes, every chunk it wrote is read back, checked for
NaN and Inf, and its digest recorded (:func:`chunk_digest`): the sha256 of its
position (chunk index, and view), its shape and dtype, and its decoded bytes.
Readers check the digest of every chunk they read (:func:`read_chunk`), so a
chunk file that is missing (zarr would read zeros), corrupt (zstd checksums
fail), changed, or swapped with another (the position is in the digest) is
refused with the store and the chunk named, never read as features. Reading
is decoding anyway; hashing the decoded bytes adds about 2 ms per MB.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import zarr

from pipeline.store import locations
from pipeline.store.layout import StoreError, chunk_file
from pipeline.store.locations import Location


def chunk_digest(block: np.ndarray, chunk: int, view: Optional[int] = None) -> str:
    """The digest of one chunk's rows: its position, shape, dtype and bytes."""
    digest = hashlib.sha256(f"{chunk}/{view}/{block.shape}/{block.dtype}".encode())
    digest.update(memoryview(np.ascontiguousarray(block)).cast("B"))
    return digest.hexdigest()


def chunk_rows(X: zarr.Array, chunk: int, rows: int) -> slice:
    """The rows of chunk ``chunk`` among the first ``rows`` rows."""
    size = X.chunks[0]
    return slice(chunk * size, min((chunk + 1) * size, rows))


def load_chunk(store: Location, X: zarr.Array, chunk: int, rows: int, view: Optional[int] = None) -> np.ndarray:
    """Chunk ``chunk`` of ``X`` (of view ``view``) as stored, limited to the first ``rows`` rows.

    Raises
    ------
    StoreError
        Naming the store and the chunk, if its file is missing or does not decode.
    """
    where = f"{store}: chunk {chunk}" + ("" if view is None else f" of view {view}")
    if not locations.exists(chunk_file(store, X, "X", chunk, view)):
        raise StoreError(f"{where} is missing on disk; `shoulders verify` lists every problem, "
                         "`dvc repro` re-extracts")
    span = chunk_rows(X, chunk, rows)
    try:
        return np.asarray(X[span] if view is None else X[span, view])
    except Exception as error:  # noqa: BLE001 - zarr/numcodecs raise several types for bad bytes
        raise StoreError(f"{where} is corrupt ({type(error).__name__}: {error}); `dvc repro` re-extracts") from None


def read_chunk(store: Location, X: zarr.Array, chunk: int, rows: int, expected: str,
               view: Optional[int] = None) -> np.ndarray:
    """:func:`load_chunk`, checked against its recorded digest."""
    block = load_chunk(store, X, chunk, rows, view)
    if chunk_digest(block, chunk, view) != expected:
        raise StoreError(f"{store}: chunk {chunk}" + ("" if view is None else f" of view {view}")
                         + " does not match its recorded digest (changed, swapped or truncated since it was "
                         "written); `dvc repro` re-extracts")
    return block


_FLOAT16_EXPONENT = np.uint16(0x7C00)


def check_finite(block: np.ndarray, where: str) -> None:
    """Refuse a block holding NaN or Inf, naming how many rows do.

    float16 blocks (most stores) are checked on their bits, an exponent of all
    ones being Inf or NaN: numpy's ``isfinite`` on float16, or a conversion to
    float32 first, runs without SIMD, an order of magnitude slower.
    """
    block = np.asarray(block)
    if block.dtype == np.float16:
        finite = (np.ascontiguousarray(block).view(np.uint16) & _FLOAT16_EXPONENT) != _FLOAT16_EXPONENT
    else:
        finite = np.isfinite(block)
    if not finite.all():
        bad = int((~finite).reshape(len(block), -1).any(axis=1).sum())
        raise StoreError(f"{where}: {bad} row(s) contain NaN or Inf")
