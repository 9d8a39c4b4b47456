"""Proving a store's rows: a digest per chunk bound to its position, checked when written, read and verified.

When an extraction finishes, every chunk it wrote is read back, checked for
NaN and Inf, and its digest recorded (:func:`chunk_digest`): the sha256 of its
position (chunk index, and view), its shape and dtype, and its decoded bytes.
Readers check the digest of every chunk they read (:func:`read_chunk`), so a
chunk file that is missing (zarr would read zeros), corrupt (zstd checksums
fail), changed, or swapped with another (the position is in the digest) is
refused with the store and the chunk named, never read as features. Reading
is decoding anyway; hashing the decoded bytes adds about 2 ms per MB.

:func:`store_problems` (the arrays and the row index) and :func:`chunk_problems`
(each chunk against its digest) are the one definition of a sound store:
``shoulders verify`` reports them, an extraction recomputes the rows of the
chunks the second finds (:mod:`pipeline.store.repair`) and checks both once it
has written.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np
import zarr

from pipeline.store import filesystem
from pipeline.store.filesystem import Location
from pipeline.store.layout import StoreError, chunk_file, n_chunks


def chunk_digest(block: np.ndarray, chunk: int, view: int | None = None) -> str:
    """The digest of one chunk's rows: its position, shape, dtype and bytes."""
    digest = hashlib.sha256(f"{chunk}/{view}/{block.shape}/{block.dtype}".encode())
    digest.update(memoryview(np.ascontiguousarray(block)).cast("B"))
    return digest.hexdigest()


def chunk_rows(X: zarr.Array, chunk: int, rows: int) -> slice:
    """The rows of chunk ``chunk`` among the first ``rows`` rows."""
    size = X.chunks[0]
    return slice(chunk * size, min((chunk + 1) * size, rows))


def load_chunk(store: Location, X: zarr.Array, chunk: int, rows: int, view: int | None = None) -> np.ndarray:
    """Chunk ``chunk`` of ``X`` (of view ``view``) as stored, limited to the first ``rows`` rows.

    Raises
    ------
    StoreError
        Naming the store and the chunk, if its file is missing or does not decode.
    """
    where = f"{store}: chunk {chunk}" + ("" if view is None else f" of view {view}")
    if not filesystem.exists(chunk_file(store, X, "X", chunk, view)):
        raise StoreError(
            f"{where} is missing on disk; `shoulders verify` lists every problem, `dvc repro` recomputes its rows"
        )
    span = chunk_rows(X, chunk, rows)
    try:
        return np.asarray(X[span] if view is None else X[span, view])
    except Exception as error:  # noqa: BLE001 - zarr/numcodecs raise several types for bad bytes
        raise StoreError(
            f"{where} is corrupt ({type(error).__name__}: {error}); `dvc repro` recomputes its rows"
        ) from None


def read_chunk(
    store: Location, X: zarr.Array, chunk: int, rows: int, expected: str, view: int | None = None
) -> np.ndarray:
    """:func:`load_chunk`, checked against its recorded digest."""
    block = load_chunk(store, X, chunk, rows, view)
    if chunk_digest(block, chunk, view) != expected:
        raise StoreError(
            f"{store}: chunk {chunk}"
            + ("" if view is None else f" of view {view}")
            + " does not match its recorded digest (changed, swapped or truncated since it was "
            "written); `dvc repro` recomputes its rows"
        )
    return block


def recorded_digest(digests: Any, chunk: int, view: int | None = None) -> str | None:
    """The digest recorded for chunk ``chunk`` (of view ``view``), or None where none is."""
    entry = digests[chunk] if chunk < len(digests) else None
    if view is not None:
        entry = entry[view] if isinstance(entry, list) and view < len(entry) else None
    return entry if isinstance(entry, str) else None


_CONTENT_HASH = re.compile(r"[0-9a-f]{64}")


def store_problems(group: zarr.Group) -> list[str]:
    """What is wrong with a store's arrays as a whole: missing, shaped other than recorded, or an index that
    no longer names one image per row. Rows cannot repair these (chunks can: :func:`chunk_problems`).

    Raises
    ------
    Exception
        Whatever zarr raises for an array whose own metadata is unreadable.
    """
    attrs = group.attrs
    problems = [f"array {name} is missing" for name in ("X", "sha256", "done") if name not in group]
    if problems:
        return problems
    X, index = group["X"], group["sha256"]
    rows, chunk_rows = int(attrs["rows"]), int(attrs["chunk_rows"])
    feature_shape, views = tuple(attrs["feature_shape"]), attrs.get("views")
    expected_shape = (*([int(views)] if views is not None else []), *feature_shape)
    if tuple(X.shape[1:]) != expected_shape or str(X.dtype) != attrs["dtype"] or X.chunks[0] != chunk_rows:
        return [
            f"X: shape {X.shape[1:]} {X.dtype} in chunks of {X.chunks[0]}, recorded {expected_shape} "
            f"{attrs['dtype']} in chunks of {chunk_rows}"
        ]
    if X.shape[0] < rows or index.shape[0] < rows:
        return [f"{rows} rows recorded, but X has {X.shape[0]} and the index {index.shape[0]}"]
    hashes = [str(h) for h in index[:rows].tolist()] if rows else []
    # A missing index chunk reads as empty strings, a damaged one as other text: rows no longer name an image.
    unnamed = sum(not _CONTENT_HASH.fullmatch(h) for h in hashes)
    if unnamed:
        problems.append(f"sha256: {unnamed} row(s) hold no content hash (the row index is damaged)")
    if len(set(hashes)) != len(hashes):
        problems.append("sha256: an image has more than one row")
    return problems


def chunk_problems(
    store: Location, group: zarr.Group, only: Collection[tuple[int, int | None]] | None = None
) -> Iterator[tuple[int, int | None, str]]:
    """``(chunk, view, problem)`` for each chunk (of each view) of the verified rows that does not prove out:
    its file missing or not decoding, NaN or Inf in it, no digest recorded, or not its recorded digest
    (changed, or swapped with another chunk: the digest is bound to the position).

    Call it on a store without :func:`store_problems` only; ``only`` limits it to those (chunk, view).
    """
    attrs = group.attrs
    X = group["X"]
    rows, chunk_rows, views = int(attrs["rows"]), int(attrs["chunk_rows"]), attrs.get("views")
    digests = attrs.get("chunk_digests") or []
    for chunk in range(n_chunks(rows, chunk_rows)):
        for view in [None] if views is None else range(int(views)):
            if only is not None and (chunk, view) not in only:
                continue
            where = f"chunk {chunk}" + ("" if view is None else f" of view {view}")
            expected = recorded_digest(digests, chunk, view)
            if expected is None:
                yield chunk, view, f"{where} has no recorded digest"
                continue
            try:
                block = load_chunk(store, X, chunk, rows, view)
                check_finite(block, where)
            except StoreError as error:
                yield chunk, view, str(error).replace(f"{store}: ", "")
                continue
            if chunk_digest(block, chunk, view) != expected:
                yield (
                    chunk,
                    view,
                    (
                        f"{where} (rows {chunk * chunk_rows}-{min((chunk + 1) * chunk_rows, rows) - 1}) "
                        "does not match its recorded digest: changed, swapped or truncated since written"
                    ),
                )


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
