"""The Zarr feature store: write chunk by chunk, resume, mark complete, open, list.

One store per feature set (backbone × weights × cut × input size), a Zarr v3
group laid out as::

    <key>.zarr/                 attrs: shoulders_store, complete, provenance, classes
      train/ X  (n, *feature_shape) float16|float32   chunks of whole rows, >= ~1 MB
             y  (n,) int32                            class index
             ids (n,) str                             manifest id of each row
             done (n_chunks,) uint8                   1 once chunk i of X is written
      val/  ...
      test/ ...

The unpooled map of the cut layer is stored; pooling is applied when features
are read (:func:`open_feature_set`).

A store is built under ``<features>/.incomplete/<key>-<fingerprint>.zarr``: the
fingerprint hashes the provenance, so a partial store made with other weights,
cut, size or manifest is never resumed into. Chunks are written atomically by
zarr's local store and each is ticked in ``done`` only after it is written, so a
killed run resumes from the last completed chunk. :meth:`FeatureWriter.finalize`
reads every chunk back (zstd checksums catch corruption, NaN/Inf are refused),
marks the store complete and renames it into place, so readers never see a
half-written store and a previous complete store survives a failed run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from pipeline import locations
from pipeline.config import POOLINGS, SPLITS
from pipeline.locations import Location

log = logging.getLogger(__name__)

STORE_FORMAT = 1
INCOMPLETE_DIR = ".incomplete"
Pooling = Literal["none", "avg", "max", "flatten", "avgmax"]


class StoreError(ValueError):
    """A feature store is missing, incomplete, corrupt or not the one asked for."""


# --------------------------------------------------------------------------- paths


def store_path(features_dir: Location, key: str) -> Location:
    """The one place that maps a feature-set key to its store's path (local, or an fsspec URL)."""
    return locations.join(features_dir, f"{key}.zarr")


def store_name(location: Location) -> str:
    """A store's key: its last path component without ``.zarr``."""
    return locations.name(location).removesuffix(".zarr")


def fingerprint(provenance: Mapping[str, Any]) -> str:
    """A short stable hash of a provenance mapping (keys sorted, JSON-encoded)."""
    blob = json.dumps(provenance, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rows_per_chunk(feature_shape: Sequence[int], itemsize: int, *, chunk_mb: float,
                   batch_size: int) -> int:
    """Rows in one chunk: at least ``chunk_mb`` MB, and a whole number of batches.

    Whole batches per chunk make the batches of a resumed run the same as those
    of an uninterrupted one, which keeps the result bit-identical.
    """
    row_bytes = itemsize * math.prod(feature_shape)
    rows = max(1, math.ceil(chunk_mb * 1e6 / row_bytes))
    return math.ceil(rows / batch_size) * batch_size


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class SplitRows:
    """What is known about a split before extraction: its labels and ids."""

    y: np.ndarray      # (n,) int
    ids: np.ndarray    # (n,) str


class FeatureWriter:
    """Create or resume a store, write chunks of rows, then finalise it.

    Parameters
    ----------
    final_path : Path
        Where the complete store will live (``store_path(features_dir, key)``).
    provenance : mapping
        JSON-serialisable description of how the features are made; stored in
        the group attributes and hashed into the partial store's name.
    splits : mapping of split name to SplitRows
    classes : sequence of str
    feature_shape : tuple of int
        Shape of one row, e.g. ``(7, 7, 1280)``.
    dtype : str
    chunk_rows : int
        Rows per chunk (see :func:`rows_per_chunk`).
    """

    def __init__(self, final_path: Location, provenance: Mapping[str, Any],
                 splits: Mapping[str, SplitRows], classes: Sequence[str],
                 feature_shape: tuple[int, ...], dtype: str, chunk_rows: int):
        self.final_path = locations.normalize(final_path)
        self.provenance = dict(provenance)
        self.chunk_rows = int(chunk_rows)
        stem = store_name(self.final_path)
        self.partial_path = locations.join(locations.parent(self.final_path), INCOMPLETE_DIR,
                                           f"{stem}-{fingerprint(self.provenance)}.zarr")
        self.group = self._open_or_create(splits, classes, feature_shape, dtype)

    def _open_or_create(self, splits, classes, feature_shape, dtype) -> zarr.Group:
        path = self.partial_path
        if locations.exists(locations.join(path, "zarr.json")):
            group = zarr.open_group(str(path), mode="r+")
            if group.attrs.get("provenance") != json.loads(json.dumps(self.provenance)):
                # Same fingerprint but other provenance would be a hash collision or a
                # hand-edited store: never resume into it.
                raise StoreError(f"partial store {path} has other provenance; delete it to start over")
            log.info("resuming partial store %s", path)
            remove_stale_temp_files(path)
            return group
        locations.makedirs(locations.parent(path))
        tmp = locations.join(locations.parent(path), locations.name(path) + f".{uuid.uuid4().hex[:8]}.new")
        group = zarr.open_group(str(tmp), mode="w")
        group.attrs.update({
            "shoulders_store": STORE_FORMAT,
            "complete": False,
            "provenance": self.provenance,
            "classes": list(classes),
            "feature_shape": list(feature_shape),
            "dtype": dtype,
            "chunk_rows": self.chunk_rows,
        })
        for split in SPLITS:
            rows = splits.get(split, SplitRows(np.zeros(0, np.int32), np.zeros(0, str)))
            n = len(rows.y)
            sub = group.create_group(split)
            create_array(sub, "X", (n, *feature_shape), (self.chunk_rows, *feature_shape), dtype)
            create_array(sub, "y", (n,), (max(n, 1),), "int32")[...] = np.asarray(rows.y, np.int32)
            ids = sub.create_array("ids", shape=(n,), chunks=(max(n, 1),), dtype=str)
            if n:
                ids[...] = np.asarray(rows.ids, dtype=str)
            create_array(sub, "done", (n_chunks(n, self.chunk_rows),), (1,), "uint8")
        # Only a fully initialised group gets the name that resume looks for.
        locations.remove(path)
        locations.move(tmp, path)
        return zarr.open_group(str(path), mode="r+")

    def pending_chunks(self, split: str) -> list[int]:
        """Indices of the chunks of ``split`` not yet written."""
        done = self.group[split]["done"]
        if done.shape[0] == 0:
            return []
        return [int(i) for i in np.flatnonzero(done[...] == 0)]

    def chunk_slice(self, split: str, chunk: int) -> slice:
        n = self.group[split]["X"].shape[0]
        start = chunk * self.chunk_rows
        return slice(start, min(start + self.chunk_rows, n))

    def write_chunk(self, split: str, chunk: int, block: np.ndarray) -> None:
        """Write one chunk of rows, then tick it as done (in that order)."""
        write_rows(self.group, split, chunk, block)

    def finalize(self) -> Location:
        """Verify every chunk, mark the store complete and move it into place."""
        stats = {}
        for split in SPLITS:
            pending = self.pending_chunks(split)
            if pending:
                raise StoreError(f"cannot finalise {self.partial_path}: {split} chunks {pending[:10]} not written")
            stats[split] = verify_array(self.group[split]["X"], f"{self.partial_path}/{split}/X")
        self.group.attrs.update({"complete": True, "stats": stats})
        final = self.final_path
        if locations.exists(final):
            # Swap, so that a failure here still leaves one complete store on disk.
            old = locations.join(locations.parent(final), locations.name(final) + f".{uuid.uuid4().hex[:8]}.old")
            locations.move(final, old)
            locations.move(self.partial_path, final)
            locations.remove(old)
        else:
            locations.makedirs(locations.parent(final))
            locations.move(self.partial_path, final)
        log.info("store complete: %s", final)
        return final


def write_rows(group: zarr.Group, split: str, chunk: int, block: np.ndarray) -> None:
    """Write chunk ``chunk`` of a partial store's ``split``, then tick it as done (in that order).

    Chunks are disjoint files, so several processes (Dask workers) may write
    different chunks of one store at once without locking.
    """
    X = group[split]["X"]
    start = chunk * X.chunks[0]
    rows = slice(start, min(start + X.chunks[0], X.shape[0]))
    expected = (rows.stop - rows.start, *X.shape[1:])
    if block.shape != expected:
        raise ValueError(f"chunk {chunk} of {split} must have shape {expected}. Received: {block.shape}")
    X[rows] = block.astype(X.dtype, copy=False)
    group[split]["done"][chunk] = 1


def n_chunks(n_rows: int, chunk_rows: int) -> int:
    return math.ceil(n_rows / chunk_rows) if n_rows else 0


def create_array(group: zarr.Group, name: str, shape, chunks, dtype) -> zarr.Array:
    return group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype,
        # Checksums make a corrupted chunk fail to decode instead of reading as data.
        compressors=ZstdCodec(level=3, checksum=True),
        # An all-zero chunk must still exist on disk, or it would look unwritten.
        config={"write_empty_chunks": True},
        fill_value=0,
    )


def remove_stale_temp_files(path: Location) -> None:
    # zarr's local store writes each chunk to "<key>.<uuid>.partial" and renames
    # it; a killed process can leave such files behind.
    if not locations.is_url(path):
        for leftover in Path(path).rglob("*.partial"):
            leftover.unlink()


def verify_array(X: zarr.Array, where: str) -> dict[str, float]:
    """Read every chunk back; refuse undecodable chunks and non-finite values."""
    chunk_rows = X.chunks[0]
    total = 0.0
    count = 0
    lo, hi = math.inf, -math.inf
    for start in range(0, X.shape[0], chunk_rows):
        try:
            block = np.asarray(X[start:start + chunk_rows], dtype=np.float32)
        except Exception as error:  # zarr/numcodecs raise several types for bad bytes
            raise StoreError(f"{where}: chunk at row {start} is corrupt ({error})") from error
        if not np.isfinite(block).all():
            bad = int((~np.isfinite(block)).any(axis=tuple(range(1, block.ndim))).sum())
            raise StoreError(f"{where}: {bad} rows from row {start} contain NaN or Inf")
        total += float(block.sum(dtype=np.float64))
        count += block.size
        lo, hi = min(lo, float(block.min(initial=np.inf))), max(hi, float(block.max(initial=-np.inf)))
    return {"rows": int(X.shape[0]), "mean": total / count if count else 0.0,
            "min": lo if count else 0.0, "max": hi if count else 0.0}


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class FeatureSet:
    """One split of one store, ready for a head.

    Attributes
    ----------
    X : ndarray or dask array of shape (n_samples, *feature_shape)
        Pooled as asked: ``(n, channels)`` for avg/max, ``(n, 2*channels)`` for
        avgmax, ``(n, h*w*c)`` for flatten, the stored map for none.
    y : ndarray of shape (n_samples,)
    ids : ndarray of shape (n_samples,)
    classes : tuple of str
    provenance : dict
    """

    X: Any
    y: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...]
    provenance: dict


def open_store(path: Path | str, *, expect: Mapping[str, Any] | None = None) -> zarr.Group:
    """Open a complete store read-only, checking its provenance.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` directory.
    expect : mapping, optional
        Provenance entries the caller requires (e.g. ``{"cut": "block6a_add"}``);
        any difference raises.

    Raises
    ------
    FileNotFoundError
        If there is no store at ``path``.
    StoreError
        If the store is incomplete, of another format, or its provenance differs.
    """
    path = locations.normalize(path)
    if not locations.exists(locations.join(path, "zarr.json")):
        raise FileNotFoundError(f"no feature store at {path} (run `dvc repro` to extract it)")
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs
    if attrs.get("shoulders_store") != STORE_FORMAT:
        raise StoreError(f"{path} is not a shoulders feature store of format {STORE_FORMAT} "
                         f"(shoulders_store={attrs.get('shoulders_store')!r})")
    if attrs.get("complete") is not True:
        raise StoreError(f"{path} is incomplete (extraction did not finish); rerun `dvc repro` "
                         "or `python -m pipeline.extract` to complete it")
    if expect:
        provenance = attrs["provenance"]
        diffs = [f"{k}: store has {provenance.get(k)!r}, expected {v!r}"
                 for k, v in expect.items() if provenance.get(k) != v]
        if diffs:
            raise StoreError(f"{path} was made with other provenance: " + "; ".join(diffs))
    return group


def open_feature_set(path: Path | str, split: str = "train", *, pooling: Pooling = "avg",
                     as_dask: bool = False, expect: Mapping[str, Any] | None = None) -> FeatureSet:
    """Read one split of a store, pooled lazily.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` store (see :func:`store_path`).
    split : {'train', 'val', 'test'}
    pooling : {'none', 'avg', 'max', 'flatten', 'avgmax'}
        How the stored map ``(n, h, w, c)`` is reduced: global average, global
        max, flattened, or average and max concatenated. Vectors ``(n, c)`` are
        returned as they are for every pooling but flatten.
    as_dask : bool
        Return ``X`` as a dask array aligned with the store's chunks (nothing is
        read until computed) instead of a numpy array read chunk by chunk.
    expect : mapping, optional
        Required provenance entries (see :func:`open_store`).

    Returns
    -------
    FeatureSet
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}. Received: {split!r}")
    if pooling != "none" and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {['none', *POOLINGS]}. Received: {pooling!r}")
    group = open_store(path, expect=expect)
    node = group[split]
    X = node["X"]
    if as_dask:
        import dask.array as da

        data = _pool(da.from_zarr(X), pooling, xp=da)
    else:
        data = _read_pooled(X, pooling)
    return FeatureSet(X=data, y=node["y"][...].astype(np.int64), ids=np.array(node["ids"][...].tolist(), dtype=object),
                      classes=tuple(group.attrs["classes"]), provenance=dict(group.attrs["provenance"]))


def pool_features(X: np.ndarray, pooling: str) -> np.ndarray:
    """Pool a block of maps ``(n, h, w, c)`` to vectors (see :func:`open_feature_set`)."""
    return _pool(X, pooling, xp=np)


def _read_pooled(X: zarr.Array, pooling: str) -> np.ndarray:
    # Chunk by chunk, so that only the pooled result is ever whole in memory.
    parts = [_pool(np.asarray(X[s:s + X.chunks[0]], dtype=np.float32), pooling, xp=np)
             for s in range(0, X.shape[0], X.chunks[0])]
    if parts:
        return np.concatenate(parts)
    return _pool(np.zeros((0, *X.shape[1:]), np.float32), pooling, xp=np)


def _pool(X, pooling: str, *, xp):
    if pooling == "none":
        return X
    if X.ndim == 2:  # the cut is already a vector per image: nothing to pool
        return X.astype("float32")
    spatial = tuple(range(1, X.ndim - 1))
    if pooling == "avg":
        return X.astype("float32").mean(axis=spatial)
    if pooling == "max":
        return X.max(axis=spatial).astype("float32")
    if pooling == "avgmax":
        return xp.concatenate([X.astype("float32").mean(axis=spatial), X.max(axis=spatial).astype("float32")], axis=1)
    return X.reshape((X.shape[0], -1)).astype("float32")


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class StoreInfo:
    key: str
    path: Location
    complete: bool
    provenance: dict
    rows: dict[str, int]
    feature_shape: tuple[int, ...]


def list_feature_sets(features_dir: Location = "features") -> list[StoreInfo]:
    """Describe every store under ``features_dir`` (a path or an fsspec URL; complete or not), sorted by key."""
    infos = []
    for path in locations.glob(locations.normalize(features_dir), "*.zarr"):
        try:
            group = zarr.open_group(str(path), mode="r")
        except (FileNotFoundError, ValueError) as error:
            log.warning("skipping %s: not a readable Zarr group (%s)", path, error)
            continue
        attrs = group.attrs
        infos.append(StoreInfo(
            key=store_name(path), path=path, complete=attrs.get("complete") is True,
            provenance=dict(attrs.get("provenance", {})),
            rows={s: int(group[s]["X"].shape[0]) for s in SPLITS if s in group},
            feature_shape=tuple(attrs.get("feature_shape", ())),
        ))
    return infos
