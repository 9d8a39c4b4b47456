"""Where stores live and how their arrays are laid out: rows keyed by image content, chunked, digested.

One store per feature set, a Zarr v3 group identified by what determines its
features (:func:`pipeline.provenance.identity_of`) — not by the dataset::

    <key>.zarr/    attrs: shoulders_store, identity, identity_fingerprint, feature_shape,
                          dtype, chunk_rows, views, rows (verified rows), chunk_digests,
                          pending (an append in progress), runs (what each extraction did)
      X       (capacity, [K,] *feature_shape)  chunks (chunk_rows, [1,] *feature_shape)
      sha256  (capacity,) str                  the content hash of each row's image
      done    (n_chunks, [K])                  1 once chunk i (of view v) is written

Row ``i`` holds the unpooled map of the cut layer for the image whose bytes
hash to ``sha256[i]``; two files with the same bytes are one row. Labels,
class names, splits and ids are not stored: they are joined from the manifest
when features are read (:mod:`pipeline.store.reader`), so re-splitting or
relabelling never touches a store. Only rows ``< rows`` count: they were
written and read back, and ``chunk_digests[i]`` is the digest of chunk ``i``
bound to its position (:mod:`pipeline.store.integrity`). A views store
(augmented passes, ``features/views/<key>.zarr``) has the extra axis of K views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import zarr
from zarr.codecs import ZstdCodec

from pipeline.store import filesystem
from pipeline.store.filesystem import Location

STORE_FORMAT = 2
INCOMPLETE_DIR = ".incomplete"
VIEWS_DIR = "views"
# Rows per chunk of the sha256 index (64 characters a row).
INDEX_CHUNK = 65536


class StoreError(ValueError):
    """A feature store is missing, incomplete, corrupt or not the one asked for."""


def store_path(features_dir: Location, key: str) -> Location:
    """The one place that maps a feature-set key to its store's path (local, or an fsspec URL)."""
    return filesystem.join(features_dir, f"{key}.zarr")


def views_path(features_dir: Location, key: str) -> Location:
    """The one place that maps a feature-set key to its views store."""
    return filesystem.join(features_dir, VIEWS_DIR, f"{key}.zarr")


def store_name(location: Location) -> str:
    """A store's key: its last path component without ``.zarr``."""
    return filesystem.name(location).removesuffix(".zarr")


def rows_per_chunk(feature_shape: Sequence[int], itemsize: int, *, chunk_mb: float, batch_size: int) -> int:
    """Rows in one chunk: at least ``chunk_mb`` MB, and a whole number of batches."""
    row_bytes = itemsize * math.prod(feature_shape)
    rows = max(1, math.ceil(chunk_mb * 1e6 / row_bytes))
    return math.ceil(rows / batch_size) * batch_size


def n_chunks(n_rows: int, chunk_rows: int) -> int:
    return math.ceil(n_rows / chunk_rows) if n_rows else 0


def create_array(group: zarr.Group, name: str, shape, chunks, dtype) -> zarr.Array:
    """A numeric array of a store: zstd with checksums, every chunk written even when all zero."""
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        # Checksums make a corrupted chunk fail to decode instead of reading as data. Level 1: on features
        # (ReLU maps are mostly zeros) it compresses as well as 3 (6.1× against 5.8× on Lite0's top) and writes
        # 1.6× faster, which the extract stage's writer thread takes from the cores decoding and inferring.
        compressors=ZstdCodec(level=1, checksum=True),
        # An all-zero chunk must still exist on disk, or it would look unwritten.
        config={"write_empty_chunks": True},
        fill_value=0,
    )


def create_index(group: zarr.Group, capacity: int) -> zarr.Array:
    """The sha256 index of the rows."""
    return group.create_array("sha256", shape=(capacity,), chunks=(INDEX_CHUNK,), dtype=str)


def chunk_key(array: zarr.Array, chunk: int, view: int | None = None) -> str:
    """The storage key (under the array's folder) of row chunk ``chunk`` (of view ``view``)."""
    coords = (chunk, *([view] if view is not None else []), *([0] * (len(array.shape) - 1 - (view is not None))))
    return array.metadata.encode_chunk_key(coords)


def chunk_file(store: Location, array: zarr.Array, name: str, chunk: int, view: int | None = None) -> Location:
    """Where chunk ``chunk`` (of view ``view``) of array ``name`` lives."""
    return filesystem.join(store, name, chunk_key(array, chunk, view))


def remove_stale_temp_files(path: Location) -> None:
    """Delete the ``*.partial`` files a killed write can leave (zarr's local store writes, then renames)."""
    if not filesystem.is_url(path):
        for leftover in Path(path).rglob("*.partial"):
            leftover.unlink()
