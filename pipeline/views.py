"""The views store: K augmented passes of a feature set, as an extra axis.

Beside the clean store ``features/<key>.zarr`` lives ``features/views/<key>.zarr``::

    attrs: shoulders_store, kind="views", complete, provenance (the clean
           provenance + augment ops and seed), views (K), classes, feature_shape
    train/ X    (n, K, *feature_shape)   chunks (rows, 1, *feature_shape)
           done (n_chunks, K) uint8      1 once chunk i of view v is written
           y, ids                        as in the clean store
    val/, test/                          only with test-time augmentation

View ``v`` of an image depends only on (seed, v, split, row) — see
:mod:`pipeline.augmentation` — so a store grows from K=4 to K=8 by computing
views 4–7 alone, and a killed run resumes from its last written chunk. The
store is updated in place (DVC keeps it: ``persist: true``) and marked
incomplete while it is being written; readers refuse it until it is complete.
A store whose provenance (backbone, cut, manifest, ops, seed, ...) differs is
rebuilt from scratch, never mixed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr

from pipeline.store import (STORE_FORMAT, FeatureSet, SplitRows, StoreError, create_array, n_chunks,
                            open_store, pool_features, remove_stale_temp_files, verify_array)

log = logging.getLogger(__name__)


def views_path(features_dir: Path | str, key: str) -> Path:
    """The one place that maps a feature-set key to its views store."""
    return Path(features_dir) / "views" / f"{key}.zarr"


class ViewWriter:
    """Create, grow or resume a views store, write chunks of one view, finalise.

    Parameters
    ----------
    path : Path
    provenance : mapping
        Everything the views depend on except their number.
    splits : mapping of split to SplitRows
        The splits that get views (train; val and test too for TTA).
    classes, feature_shape, dtype, chunk_rows
        As in :class:`pipeline.store.FeatureWriter`.
    views : int
        K, the number of views wanted.
    """

    def __init__(self, path: Path, provenance: Mapping[str, Any], splits: Mapping[str, SplitRows],
                 classes: Sequence[str], feature_shape: tuple[int, ...], dtype: str, chunk_rows: int, views: int):
        self.path = Path(path)
        self.provenance = json.loads(json.dumps(dict(provenance)))
        self.chunk_rows, self.views = int(chunk_rows), int(views)
        self.group = self._open_or_create(splits, classes, feature_shape, dtype)

    def _open_or_create(self, splits, classes, feature_shape, dtype) -> zarr.Group:
        if (self.path / "zarr.json").is_file():
            group = zarr.open_group(self.path, mode="r+")
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
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(self.path, mode="w")
        group.attrs.update({"shoulders_store": STORE_FORMAT, "kind": "views", "complete": False,
                            "provenance": self.provenance, "views": self.views, "splits": list(splits),
                            "classes": list(classes), "feature_shape": list(feature_shape), "dtype": dtype,
                            "chunk_rows": self.chunk_rows})
        for split, rows in splits.items():
            n = len(rows.y)
            sub = group.create_group(split)
            create_array(sub, "X", (n, self.views, *feature_shape), (self.chunk_rows, 1, *feature_shape), dtype)
            create_array(sub, "y", (n,), (max(n, 1),), "int32")[...] = np.asarray(rows.y, np.int32)
            ids = sub.create_array("ids", shape=(n,), chunks=(max(n, 1),), dtype=str)
            if n:
                ids[...] = np.asarray(rows.ids, dtype=str)
            create_array(sub, "done", (n_chunks(n, self.chunk_rows), self.views), (1, 1), "uint8")
        return group

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

    def finalize(self) -> Path:
        """Verify every chunk of every view and mark the store complete."""
        for split in self.splits:
            for view in range(self.views):
                missing = self.pending(split, view)
                if missing:
                    raise StoreError(f"cannot finalise {self.path}: {split} view {view} chunks {missing[:10]} "
                                     "not written")
            verify_array(self.group[split]["X"], f"{self.path}/{split}/X")
        self.group.attrs["complete"] = True
        log.info("views store complete: %s (%d views)", self.path, self.views)
        return self.path


def open_views(path: Path | str, split: str = "train", *, pooling: str = "avg",
               expect: Mapping[str, Any] | None = None) -> FeatureSet:
    """Read the augmented views of one split, pooled per view.

    Parameters
    ----------
    path : path-like
        A views store (see :func:`views_path`).
    split : str
        A split the store has views of.
    pooling : {'none', 'avg', 'max', 'flatten', 'avgmax'}
    expect : mapping, optional
        Required provenance entries.

    Returns
    -------
    FeatureSet
        ``X`` of shape (n_samples, K, n_features) (or the unpooled maps for 'none').
    """
    group = open_store(path, expect=expect)
    if group.attrs.get("kind") != "views":
        raise StoreError(f"{path} is a feature store, not a views store")
    if split not in group.attrs["splits"]:
        raise ValueError(f"{path} has views of {group.attrs['splits']} only. Received: split={split!r} "
                         "(set extract.augment.tta: true for views of val and test)")
    node = group[split]
    X = node["X"]
    n, views = X.shape[:2]
    parts = []
    for start in range(0, n, X.chunks[0]):
        block = np.asarray(X[start:start + X.chunks[0]], np.float32)
        pooled = pool_features(block.reshape(-1, *block.shape[2:]), pooling)
        parts.append(pooled.reshape(block.shape[0], views, *pooled.shape[1:]))
    data = np.concatenate(parts) if parts else np.zeros((0, views, 0), np.float32)
    return FeatureSet(X=data, y=node["y"][...].astype(np.int64), ids=np.array(node["ids"][...].tolist(), dtype=object),
                      classes=tuple(group.attrs["classes"]), provenance=dict(group.attrs["provenance"]))
