"""Writing stores chunk by chunk: create or resume, write, verify, mark complete.

Two writers share one way of creating a store (fully initialised under a
temporary name, then renamed into place, so a half-made group never has the
name a reader or a resume looks for) and of finishing one (every chunk read
back by :func:`pipeline.store.integrity.array_statistics`):

- :class:`FeatureWriter` builds a feature store under
  ``<features>/.incomplete/<key>-<fingerprint>.zarr``. The fingerprint hashes
  the provenance, so a partial store made with other weights, cut, size or
  manifest is never resumed into. Chunks are written atomically by zarr's local
  store and each is ticked in ``done`` only after it is written, so a killed run
  resumes from the last completed chunk. :meth:`FeatureWriter.finalize` verifies,
  marks the store complete and swaps it into place, so a previous complete store
  survives a failed run.
- :class:`ViewWriter` keeps a views store in place (DVC ``persist``) and grows
  it: view ``v`` of an image depends only on (seed, v, split, row), so raising
  K computes the new views only. A store of other provenance is rebuilt (made
  afresh, then swapped in), never mixed.

Both work on local paths and on fsspec URLs (:mod:`pipeline.store.locations`).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import zarr

from pipeline.config import SPLITS
from pipeline.provenance import fingerprint
from pipeline.store import locations
from pipeline.store.integrity import array_statistics
from pipeline.store.layout import (INCOMPLETE_DIR, STORE_FORMAT, StoreError, create_array, n_chunks,
                                   remove_stale_temp_files, store_name)
from pipeline.store.locations import Location

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitRows:
    """What is known about a split before extraction: its labels and ids."""

    y: np.ndarray      # (n,) int
    ids: np.ndarray    # (n,) str


def _json(mapping: Mapping[str, Any]) -> dict:
    # As zarr stores attributes, so that comparisons with what a store holds are exact.
    return json.loads(json.dumps(dict(mapping)))


def create_group(path: Location, attrs: Mapping[str, Any], fill: Callable[[zarr.Group], None]) -> zarr.Group:
    """Create the group at ``path`` atomically: initialised under a temporary name, then renamed over ``path``.

    ``fill(group)`` creates its arrays. Whatever was at ``path`` is replaced.
    """
    locations.makedirs(locations.parent(path))
    tmp = locations.join(locations.parent(path), locations.name(path) + f".{uuid.uuid4().hex[:8]}.new")
    group = zarr.open_group(str(tmp), mode="w")
    group.attrs.update(dict(attrs))
    fill(group)
    swap_into_place(tmp, path)
    return zarr.open_group(str(path), mode="r+")


def swap_into_place(source: Location, target: Location) -> None:
    """Rename ``source`` over ``target``; an existing ``target`` is moved aside first and removed last,
    so a failure in between still leaves one whole store on disk."""
    if locations.exists(target):
        old = locations.join(locations.parent(target), locations.name(target) + f".{uuid.uuid4().hex[:8]}.old")
        locations.move(target, old)
        locations.move(source, target)
        locations.remove(old)
    else:
        locations.makedirs(locations.parent(target))
        locations.move(source, target)


def _labelled_arrays(sub: zarr.Group, rows: SplitRows) -> int:
    """Create ``y`` and ``ids`` of one split; returns its row count."""
    n = len(rows.y)
    create_array(sub, "y", (n,), (max(n, 1),), "int32")[...] = np.asarray(rows.y, np.int32)
    ids = sub.create_array("ids", shape=(n,), chunks=(max(n, 1),), dtype=str)
    if n:
        ids[...] = np.asarray(rows.ids, dtype=str)
    return n


def _empty_split() -> SplitRows:
    return SplitRows(np.zeros(0, np.int32), np.zeros(0, str))


class FeatureWriter:
    """Create or resume a store, write chunks of rows, then finalise it.

    Parameters
    ----------
    final_path : Location
        Where the complete store will live (``store_path(features_dir, key)``).
    provenance : mapping
        JSON-serialisable description of how the features are made
        (:meth:`pipeline.provenance.Provenance.to_json`); stored in the group
        attributes and hashed into the partial store's name.
    splits : mapping of split name to SplitRows
    classes : sequence of str
    feature_shape : tuple of int
        Shape of one row, e.g. ``(7, 7, 1280)``.
    dtype : str
    chunk_rows : int
        Rows per chunk (see :func:`pipeline.store.layout.rows_per_chunk`).
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
            if group.attrs.get("provenance") != _json(self.provenance):
                # Same fingerprint but other provenance would be a hash collision or a
                # hand-edited store: never resume into it.
                raise StoreError(f"partial store {path} has other provenance; delete it to start over")
            log.info("resuming partial store %s", path)
            remove_stale_temp_files(path)
            return group

        def fill(group: zarr.Group) -> None:
            for split in SPLITS:
                sub = group.create_group(split)
                n = _labelled_arrays(sub, splits.get(split, _empty_split()))
                create_array(sub, "X", (n, *feature_shape), (self.chunk_rows, *feature_shape), dtype)
                create_array(sub, "done", (n_chunks(n, self.chunk_rows),), (1,), "uint8")

        return create_group(path, {"shoulders_store": STORE_FORMAT, "complete": False, "provenance": self.provenance,
                                   "classes": list(classes), "feature_shape": list(feature_shape), "dtype": dtype,
                                   "chunk_rows": self.chunk_rows}, fill)

    def pending_chunks(self, split: str) -> list[int]:
        """Indices of the chunks of ``split`` not yet written."""
        done = self.group[split]["done"]
        if done.shape[0] == 0:
            return []
        return [int(i) for i in np.flatnonzero(done[...] == 0)]

    def chunk_rows_of(self, split: str, chunk: int) -> range:
        """The rows of chunk ``chunk`` of ``split``."""
        n = self.group[split]["X"].shape[0]
        start = chunk * self.chunk_rows
        return range(start, min(start + self.chunk_rows, n))

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
            stats[split] = array_statistics(self.group[split]["X"], f"{self.partial_path}/{split}/X")
        self.group.attrs.update({"complete": True, "stats": stats})
        swap_into_place(self.partial_path, self.final_path)
        log.info("store complete: %s", self.final_path)
        return self.final_path


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


class ViewWriter:
    """Create, grow or resume a views store, write chunks of one view, finalise.

    Parameters
    ----------
    path : Location
        The views store (:func:`pipeline.store.layout.views_path`).
    provenance : mapping
        Everything the views depend on except their number.
    splits : mapping of split to SplitRows
        The splits that get views (train; val and test too for TTA).
    classes, feature_shape, dtype, chunk_rows
        As in :class:`FeatureWriter`.
    views : int
        K, the number of views wanted.
    """

    def __init__(self, path: Location, provenance: Mapping[str, Any], splits: Mapping[str, SplitRows],
                 classes: Sequence[str], feature_shape: tuple[int, ...], dtype: str, chunk_rows: int, views: int):
        self.path = locations.normalize(path)
        self.provenance = _json(provenance)
        self.chunk_rows, self.views = int(chunk_rows), int(views)
        self.group = self._open_or_create(splits, classes, feature_shape, dtype)

    def _open_or_create(self, splits, classes, feature_shape, dtype) -> zarr.Group:
        if locations.exists(locations.join(self.path, "zarr.json")):
            group = zarr.open_group(str(self.path), mode="r+")
            if group.attrs.get("provenance") == self.provenance and set(group.attrs.get("splits", [])) == set(splits):
                before = int(group.attrs.get("views", 0))
                remove_stale_temp_files(self.path)
                group.attrs.update({"complete": False, "views": self.views})
                for split in splits:
                    node = group[split]
                    node["X"].resize((node["X"].shape[0], self.views, *node["X"].shape[2:]))
                    node["done"].resize((node["done"].shape[0], self.views))
                log.info("views store %s: %d views kept, %d wanted", self.path, min(before, self.views), self.views)
                return group
            log.info("views store %s was made with other provenance or splits: rebuilding it", self.path)

        def fill(group: zarr.Group) -> None:
            for split, rows in splits.items():
                sub = group.create_group(split)
                n = _labelled_arrays(sub, rows)
                create_array(sub, "X", (n, self.views, *feature_shape), (self.chunk_rows, 1, *feature_shape), dtype)
                create_array(sub, "done", (n_chunks(n, self.chunk_rows), self.views), (1, 1), "uint8")

        return create_group(self.path, {"shoulders_store": STORE_FORMAT, "kind": "views", "complete": False,
                                        "provenance": self.provenance, "views": self.views, "splits": list(splits),
                                        "classes": list(classes), "feature_shape": list(feature_shape),
                                        "dtype": dtype, "chunk_rows": self.chunk_rows}, fill)

    @property
    def splits(self) -> list[str]:
        return list(self.group.attrs["splits"])

    def pending(self, split: str, view: int) -> list[int]:
        """Chunks of ``split`` not yet written for ``view``."""
        done = self.group[split]["done"]
        if done.shape[0] == 0:
            return []
        return [int(i) for i in np.flatnonzero(done[:, view] == 0)]

    def chunk_rows_of(self, split: str, chunk: int) -> range:
        """The rows of chunk ``chunk`` of ``split``."""
        n = self.group[split]["X"].shape[0]
        start = chunk * self.chunk_rows
        return range(start, min(start + self.chunk_rows, n))

    def write_chunk(self, split: str, view: int, chunk: int, block: np.ndarray) -> None:
        """Write one chunk of one view, then tick it as done (in that order)."""
        X = self.group[split]["X"]
        rows = self.chunk_rows_of(split, chunk)
        expected = (len(rows), *X.shape[2:])
        if block.shape != expected:
            raise ValueError(f"chunk {chunk} of {split} view {view} must have shape {expected}. "
                             f"Received: {block.shape}")
        X[rows.start:rows.stop, view] = block.astype(X.dtype, copy=False)
        self.group[split]["done"][chunk, view] = 1

    def finalize(self) -> Location:
        """Verify every chunk of every view and mark the store complete."""
        for split in self.splits:
            for view in range(self.views):
                missing = self.pending(split, view)
                if missing:
                    raise StoreError(f"cannot finalise {self.path}: {split} view {view} chunks {missing[:10]} "
                                     "not written")
            array_statistics(self.group[split]["X"], f"{self.path}/{split}/X")
        self.group.attrs["complete"] = True
        log.info("views store complete: %s (%d views)", self.path, self.views)
        return self.path
