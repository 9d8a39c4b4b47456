"""Where stores live and how their arrays are laid out: paths, chunking, array creation.

One feature store per feature set (backbone × weights × cut × input size), a
Zarr v3 group laid out as::

    <key>.zarr/                 attrs: shoulders_store, complete, provenance, classes,
                                       feature_shape, dtype, chunk_rows, stats
      train/ X  (n, *feature_shape) float16|float32   chunks of whole rows, >= ~1 MB
             y  (n,) int32                            class index
             ids (n,) str                             manifest id of each row
             done (n_chunks,) uint8                   1 once chunk i of X is written
      val/  ...
      test/ ...

Its views store (augmented passes, :mod:`pipeline.store.writer`) lives at
``<features>/views/<key>.zarr`` with ``X`` of shape ``(n, K, *feature_shape)``.
The unpooled map of the cut layer is stored; pooling is applied when features
are read (:mod:`pipeline.store.pooling`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import zarr
from zarr.codecs import ZstdCodec

from pipeline.store import locations
from pipeline.store.locations import Location

STORE_FORMAT = 1
INCOMPLETE_DIR = ".incomplete"
VIEWS_DIR = "views"


class StoreError(ValueError):
    """A feature store is missing, incomplete, corrupt or not the one asked for."""


def store_path(features_dir: Location, key: str) -> Location:
    """The one place that maps a feature-set key to its store's path (local, or an fsspec URL)."""
    return locations.join(features_dir, f"{key}.zarr")


def views_path(features_dir: Location, key: str) -> Location:
    """The one place that maps a feature-set key to its views store."""
    return locations.join(features_dir, VIEWS_DIR, f"{key}.zarr")


def store_name(location: Location) -> str:
    """A store's key: its last path component without ``.zarr``."""
    return locations.name(location).removesuffix(".zarr")


def rows_per_chunk(feature_shape: Sequence[int], itemsize: int, *, chunk_mb: float, batch_size: int) -> int:
    """Rows in one chunk: at least ``chunk_mb`` MB, and a whole number of batches.

    Whole batches per chunk make the batches of a resumed run the same as those
    of an uninterrupted one, which keeps the result bit-identical.
    """
    row_bytes = itemsize * math.prod(feature_shape)
    rows = max(1, math.ceil(chunk_mb * 1e6 / row_bytes))
    return math.ceil(rows / batch_size) * batch_size


def n_chunks(n_rows: int, chunk_rows: int) -> int:
    return math.ceil(n_rows / chunk_rows) if n_rows else 0


def create_array(group: zarr.Group, name: str, shape, chunks, dtype) -> zarr.Array:
    """A numeric array of a store: zstd with checksums, every chunk written even when all zero."""
    return group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype,
        # Checksums make a corrupted chunk fail to decode instead of reading as data.
        compressors=ZstdCodec(level=3, checksum=True),
        # An all-zero chunk must still exist on disk, or it would look unwritten.
        config={"write_empty_chunks": True},
        fill_value=0,
    )


def remove_stale_temp_files(path: Location) -> None:
    """Delete the ``*.partial`` files a killed write can leave (zarr's local store writes, then renames)."""
    if not locations.is_url(path):
        for leftover in Path(path).rglob("*.partial"):
            leftover.unlink()
