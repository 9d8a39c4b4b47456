"""Reading stores: open a complete one, read a split pooled, read augmented views, list stores.

Readers refuse a store that is incomplete, of another format, or whose
provenance differs from what the caller expects (``expect={...}``); pooling is
applied chunk by chunk as rows are read (:mod:`pipeline.store.pooling`), so only
the pooled result is ever whole in memory. Every function takes a local path or
an fsspec URL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import zarr

from pipeline.config import SPLITS
from pipeline.store import locations
from pipeline.store.layout import STORE_FORMAT, StoreError, store_name
from pipeline.store.locations import Location
from pipeline.store.pooling import check_pooling, pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSet:
    """One split of one store, ready for a head.

    Attributes
    ----------
    X : ndarray or dask array of shape (n_samples, *feature_shape)
        Pooled as asked: ``(n, channels)`` for avg/max, ``(n, 2*channels)`` for
        avgmax, ``(n, h*w*c)`` for flatten, the stored map for none; for views,
        ``(n, K, width)``.
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


def open_store(path: Location, *, expect: Mapping[str, Any] | None = None) -> zarr.Group:
    """Open a complete store read-only, checking its provenance.

    Parameters
    ----------
    path : path-like or URL
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
                         "or `python -m pipeline.stages.extract` to complete it")
    if expect:
        provenance = attrs["provenance"]
        diffs = [f"{k}: store has {provenance.get(k)!r}, expected {v!r}"
                 for k, v in expect.items() if provenance.get(k) != v]
        if diffs:
            raise StoreError(f"{path} was made with other provenance: " + "; ".join(diffs))
    return group


def open_feature_set(path: Location, split: str = "train", *, pooling: str = "avg",
                     as_dask: bool = False, expect: Mapping[str, Any] | None = None) -> FeatureSet:
    """Read one split of a store, pooled lazily.

    Parameters
    ----------
    path : path-like or URL
        The ``.zarr`` store (see :func:`pipeline.store.layout.store_path`).
    split : {'train', 'val', 'test'}
    pooling : {'none', 'avg', 'max', 'flatten', 'avgmax'}
        How the stored map ``(n, h, w, c)`` is reduced (:mod:`pipeline.store.pooling`).
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
    check_pooling(pooling)
    group = open_store(path, expect=expect)
    node = group[split]
    X = node["X"]
    if as_dask:
        import dask.array as da

        data = pool(da.from_zarr(X), pooling, xp=da)
    else:
        data = _read_pooled(X, pooling)
    return _feature_set(group, node, data)


def open_views(path: Location, split: str = "train", *, pooling: str = "avg",
               expect: Mapping[str, Any] | None = None) -> FeatureSet:
    """Read the augmented views of one split, pooled per view.

    Parameters
    ----------
    path : path-like or URL
        A views store (see :func:`pipeline.store.layout.views_path`).
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
    check_pooling(pooling)
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
        pooled = pool(block.reshape(-1, *block.shape[2:]), pooling)
        parts.append(pooled.reshape(block.shape[0], views, *pooled.shape[1:]))
    data = np.concatenate(parts) if parts else np.zeros((0, views, 0), np.float32)
    return _feature_set(group, node, data)


def _feature_set(group: zarr.Group, node: zarr.Group, X: Any) -> FeatureSet:
    return FeatureSet(X=X, y=node["y"][...].astype(np.int64), ids=np.array(node["ids"][...].tolist(), dtype=object),
                      classes=tuple(group.attrs["classes"]), provenance=dict(group.attrs["provenance"]))


def _read_pooled(X: zarr.Array, pooling: str) -> np.ndarray:
    # Chunk by chunk, so that only the pooled result is ever whole in memory.
    parts = [pool(np.asarray(X[s:s + X.chunks[0]], dtype=np.float32), pooling)
             for s in range(0, X.shape[0], X.chunks[0])]
    if parts:
        return np.concatenate(parts)
    return pool(np.zeros((0, *X.shape[1:]), np.float32), pooling)


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
