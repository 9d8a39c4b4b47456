"""Reading stores: the features of a split, joined from the manifest by image content, pooled as read.

A store holds rows keyed by the sha256 of each image's bytes; it knows nothing
of labels or splits. :func:`open_feature_set` takes the manifest (a path, its
records, or by default the ``data/manifest.csv`` of the project the store is
in: the first ``data/manifest.csv`` found going up from the store's folder),
picks the split's records, finds each one's row by its hash and reads the
chunks that hold them, checking each chunk's digest
(:func:`pipeline.store.integrity.read_chunk`) and pooling it as it is read
(:mod:`pipeline.store.pooling`), so only the pooled result is ever whole in
memory. The returned :class:`FeatureSet` has the manifest's order, labels,
ids and class names. A store that lacks a row for an image of the split, is
of another identity than ``expect``, or of another format, is refused, naming
what to do. Every function takes a local path or an fsspec URL.

A store may be replaced while it is read: ``shoulders gc`` and an extraction
that builds a store of a new identity swap a rewritten store into place
(:func:`pipeline.store.writer.swap_into_place`), an extraction repairs damaged
chunks in place. A reader between reading the store's attributes and its
chunks then finds chunks missing or not matching the digests it holds — not
damage. So a read that fails starts over (:func:`read_consistently`) when the
store's attributes are no longer those it opened (every rewrite records a
run there) and reports the failure only when they are. No lock is taken: a
reader needs no write access to the features folder, never waits behind an
extraction (which appends rows readers may go on reading), and the same check
serves stores on object stores, which have no locks, and dask arrays, read
after :func:`open_feature_set` returns (their compute stops naming the rewrite).

For ad-hoc analysis::

    from pipeline.store.reader import list_feature_sets, open_feature_set
    train = open_feature_set("features/lite0_top.zarr", "train", pooling="avg")
    train.X.shape, train.y[:5], train.ids[:2], train.classes, train.provenance["cut"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr

from pipeline.cache_dir import usable_cores
from pipeline.config import SPLITS
from pipeline.manifest import Record, class_names, read_manifest
from pipeline.store import filesystem
from pipeline.store.filesystem import Location
from pipeline.store.integrity import chunk_rows, read_chunk
from pipeline.store.layout import STORE_FORMAT, StoreError, store_name
from pipeline.store.pooling import check_pooling, pool

log = logging.getLogger(__name__)

Manifest = str | Path | Sequence[Record] | None
MANIFEST_NAME = Path("data") / "manifest.csv"
# A read of a store that was replaced meanwhile starts over at most this many times (a store rewritten more
# often than that while one read runs is reported as found).
REREADS = 3
# How long a read waits for a store being swapped into place: its previous version is moved aside as
# <name>.<id>.old until the new one is renamed in (two renames on a local disk, a copy on an object store).
SWAP_WAIT_S = 10.0
T = TypeVar("T")


@dataclass(frozen=True)
class FeatureSet:
    """One split of one store, ready for a head.

    Attributes
    ----------
    X : ndarray or dask array of shape (n_samples, width)
        Pooled as asked: ``(n, channels)`` for avg/max, ``(n, 2*channels)`` for
        avgmax, ``(n, h*w*c)`` for flatten, the stored map for none; for views,
        ``(n, K, width)``. Rows in the manifest's order.
    y : ndarray of shape (n_samples,)
        Labels, from the manifest.
    ids : ndarray of shape (n_samples,)
        Manifest ids (paths under the dataset folder).
    sha256 : ndarray of shape (n_samples,)
        Content hash of each image: its row's key.
    classes : tuple of str
    provenance : dict
        The store's identity, and the provenance of its latest run.
    """

    X: Any
    y: np.ndarray
    ids: np.ndarray
    sha256: np.ndarray
    classes: tuple[str, ...]
    provenance: dict


def open_store(path: Location, *, expect: Mapping[str, Any] | None = None) -> zarr.Group:
    """Open a store read-only, checking its format and (optionally) its identity.

    Parameters
    ----------
    path : path-like or URL
    expect : mapping, optional
        Identity entries the caller requires (e.g. ``{"cut": "block6a_add"}``);
        any difference raises.

    Raises
    ------
    FileNotFoundError
        If there is no store at ``path``.
    StoreError
        If the store is of another format, has no verified rows, or its identity differs.
    """
    path = filesystem.normalize(path)
    if not filesystem.exists(filesystem.join(path, "zarr.json")):
        raise FileNotFoundError(f"no feature store at {path} (run `dvc repro` to extract it)")
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs
    if attrs.get("shoulders_store") != STORE_FORMAT:
        raise StoreError(
            f"{path} is not a shoulders feature store of format {STORE_FORMAT} "
            f"(shoulders_store={attrs.get('shoulders_store')!r}); rerun `dvc repro` to extract it again"
        )
    if expect:
        identity = attrs["identity"]
        diffs = [
            f"{k}: store has {identity.get(k)!r}, expected {v!r}" for k, v in expect.items() if identity.get(k) != v
        ]
        if diffs:
            raise StoreError(f"{path} was made with another identity: " + "; ".join(diffs))
    return group


def read_consistently(path: Location, open_group: Callable[[], zarr.Group], read: Callable[[zarr.Group], T]) -> T:
    """``read(open_group())``, started over on the store now at ``path`` when it failed because the store
    was replaced or rewritten meanwhile (module docstring); a failure in an unchanged store is raised as is."""
    path = filesystem.normalize(path)
    attempt = 0
    while True:
        wait_for_swap(path)
        group = open_group()
        try:
            return read(group)
        # StoreError is a ValueError; zarr raises KeyError or FileNotFoundError for an array swapped away.
        except (ValueError, KeyError, OSError):
            if attempt == REREADS or not replaced_since(path, group.attrs):
                raise
        attempt += 1
        log.info("%s was rewritten while it was read (by `shoulders gc` or an extraction); reading it again", path)


def replaced_since(path: Location, attrs: Mapping[str, Any]) -> bool:
    """Whether the store at ``path`` is no longer the one whose attributes were ``attrs``: rewritten
    (``rows``, ``chunk_digests`` and ``runs`` change), replaced by another, or gone."""
    path = filesystem.normalize(path)
    wait_for_swap(path)
    if not filesystem.exists(filesystem.join(path, "zarr.json")):
        return True
    try:
        now = dict(zarr.open_group(str(path), mode="r").attrs)
    except (FileNotFoundError, ValueError):  # removed, or its zarr.json being replaced, since the check above
        return True
    return now != dict(attrs)


def wait_for_swap(path: Location) -> None:
    """Return once the store at ``path`` is not in the middle of a swap (absent while its previous version,
    moved aside as ``<name>.<id>.old``, is still there), or after :data:`SWAP_WAIT_S`."""
    deadline = time.monotonic() + SWAP_WAIT_S
    while (
        not filesystem.exists(filesystem.join(path, "zarr.json"))
        and filesystem.glob(filesystem.parent(path), f"{filesystem.name(path)}.*.old")
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)


def provenance_of(group: zarr.Group) -> dict:
    """The store's identity together with the full provenance of the run that last added rows."""
    runs = [run for run in group.attrs.get("runs") or [] if "provenance" in run]  # gc runs add no rows
    return {**(runs[-1]["provenance"] if runs else {}), **dict(group.attrs["identity"])}


def row_index(group: zarr.Group) -> dict[str, int]:
    """The row of each content hash among the store's verified rows."""
    rows = int(group.attrs["rows"])
    hashes = group["sha256"][:rows].tolist() if rows else []
    return {str(h): i for i, h in enumerate(hashes)}


def find_manifest(store: Location) -> Path:
    """The ``data/manifest.csv`` of the project a local store is in (searched upwards from the store's folder)."""
    if filesystem.is_url(store):
        raise ValueError(f"{store} is not a local store: pass manifest= (a path, or its records)")
    for folder in Path(store).resolve().parents:
        candidate = folder / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {MANIFEST_NAME} above {store}: pass manifest= (a path, or its records)")


def manifest_records(manifest: Manifest, store: Location) -> list[Record]:
    """The records of ``manifest``: given, read from a path, or found from the store's location."""
    if manifest is None:
        manifest = find_manifest(store)
    if isinstance(manifest, (str, Path)):
        return read_manifest(manifest)
    return list(manifest)


def _split_records(records: Sequence[Record], split: str) -> list[Record]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}. Received: {split!r}")
    return [r for r in records if r.split == split]


def _rows_of(group: zarr.Group, path: Location, records: Sequence[Record]) -> np.ndarray:
    index = row_index(group)
    missing = [r for r in records if r.sha256 not in index]
    if missing:
        raise StoreError(
            f"{path} has no features for {len(missing)} image(s) of the manifest (first: "
            f"{missing[0].id}, sha256 {missing[0].sha256[:12]}…); run `dvc repro` to extract them"
        )
    return np.array([index[r.sha256] for r in records], dtype=np.int64)


def _gathered(
    group: zarr.Group,
    path: Location,
    rows: Mapping[str, np.ndarray],
    poolings: Sequence[str],
    view: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """``result[key][pooling]``: the rows ``rows[key]`` pooled, every chunk holding one read (digest-checked) once."""
    X = group["X"]
    total = int(group.attrs["rows"])
    digests = group.attrs["chunk_digests"]
    size = X.chunks[0]
    out = {
        key: {
            pooling: np.empty((len(wanted), *_empty_pooled(group, pooling).shape[1:]), np.float32)
            for pooling in poolings
        }
        for key, wanted in rows.items()
    }
    chunk_of = {key: wanted // size for key, wanted in rows.items()}

    def gather(chunk: int) -> None:
        expected = digests[chunk] if view is None else digests[chunk][view]
        block = np.asarray(read_chunk(path, X, int(chunk), total, expected, view), np.float32)
        for key, wanted in rows.items():
            here = np.flatnonzero(chunk_of[key] == chunk)
            if len(here):
                picked = block[wanted[here] - chunk * size]
                for pooling in poolings:
                    out[key][pooling][here] = pool(picked, pooling)

    # Chunks on every core: decoding, the digest, the cast and the pooling release the GIL (0.7 s of the default
    # heads stage's 2.3 s of reading on 2 cores); each chunk fills its own rows of ``out``.
    chunks = np.unique(np.concatenate([*chunk_of.values(), np.zeros(0, np.int64)]))
    with ThreadPoolExecutor(max(1, min(len(chunks), usable_cores(), 4))) as threads:
        list(threads.map(gather, chunks))  # list(): the first error (a StoreError naming the chunk) is raised here
    return out


def _feature_set(group: zarr.Group, records: Sequence[Record], all_records: Sequence[Record], X: Any) -> FeatureSet:
    """A split's features with the manifest's labels, ids and hashes (class names from the whole manifest)."""
    return FeatureSet(
        X=X,
        y=np.array([r.label for r in records], np.int64),
        ids=np.array([r.id for r in records], dtype=object),
        sha256=np.array([r.sha256 for r in records], dtype=object),
        classes=tuple(class_names(all_records)),
        provenance=provenance_of(group),
    )


def open_feature_set(
    path: Location,
    split: str = "train",
    *,
    manifest: Manifest = None,
    pooling: str = "avg",
    as_dask: bool = False,
    expect: Mapping[str, Any] | None = None,
) -> FeatureSet:
    """Read the features of one split, joined from the manifest by content hash, pooled as read.

    Parameters
    ----------
    path : path-like or URL
        The ``.zarr`` store (see :func:`pipeline.store.layout.store_path`).
    split : {'train', 'val', 'test'}
    manifest : path, sequence of Record, or None
        Which images make up the split, with their labels; ``None``: the
        project's ``data/manifest.csv`` (see :func:`find_manifest`).
    pooling : {'none', 'avg', 'max', 'flatten', 'avgmax'}
        How the stored map ``(n, h, w, c)`` is reduced (:mod:`pipeline.store.pooling`).
    as_dask : bool
        Return ``X`` as a dask array over the store's chunks (nothing is read
        until computed; every chunk's digest is checked as it is read) instead
        of a numpy array.
    expect : mapping, optional
        Required identity entries (see :func:`open_store`).

    Returns
    -------
    FeatureSet
    """
    if not as_dask:
        return read_pooled(path, (split,), poolings=(pooling,), manifest=manifest, expect=expect)[split][pooling]
    check_pooling(pooling)

    def read(group: zarr.Group) -> FeatureSet:
        all_records = manifest_records(manifest, path)
        records = _split_records(all_records, split)
        return _feature_set(group, records, all_records, _lazy(group, path, _rows_of(group, path, records), pooling))

    return read_consistently(path, lambda: _features_group(path, expect), read)


def read_pooled(
    path: Location,
    splits: Sequence[str],
    *,
    poolings: Sequence[str],
    manifest: Manifest = None,
    expect: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, FeatureSet]]:
    """Several splits of a store, each under several poolings, reading every chunk of the store once.

    What :func:`open_feature_set` gives for each ``(split, pooling)``, as
    ``result[split][pooling]``: the heads stage reads train and val under every
    pooling of its grid this way, where one call per pair would read (and
    digest-check) the store's chunks once per pair (their rows interleave).
    """
    for pooling in poolings:
        check_pooling(pooling)

    def read(group: zarr.Group) -> dict[str, dict[str, FeatureSet]]:
        all_records = manifest_records(manifest, path)
        records = {split: _split_records(all_records, split) for split in splits}
        out = _gathered(group, path, {split: _rows_of(group, path, records[split]) for split in splits}, poolings)
        return {
            split: {
                pooling: _feature_set(group, records[split], all_records, out[split][pooling]) for pooling in poolings
            }
            for split in splits
        }

    return read_consistently(path, lambda: _features_group(path, expect), read)


def _features_group(path: Location, expect: Mapping[str, Any] | None) -> zarr.Group:
    group = open_store(path, expect=expect)
    if group.attrs.get("kind") != "features":
        raise StoreError(f"{path} is a views store; open it with open_views")
    return group


def _empty_pooled(group: zarr.Group, pooling: str) -> np.ndarray:
    return pool(np.zeros((0, *group.attrs["feature_shape"]), np.float32), pooling)


def _lazy(group: zarr.Group, path: Location, rows: np.ndarray, pooling: str):
    """A dask array of the pooled rows, each store chunk digest-checked when it is computed."""
    import dask.array as da

    X = group["X"]
    total = int(group.attrs["rows"])
    digests = group.attrs["chunk_digests"]
    size = X.chunks[0]
    counts = [len(range(*chunk_rows(X, c, total).indices(total))) for c in range(len(digests))]
    shape = _empty_pooled(group, pooling).shape[1:]
    opened = dict(group.attrs)

    def load(c: int) -> np.ndarray:
        try:
            block = read_chunk(path, X, c, total, digests[c])
        except StoreError as error:
            if replaced_since(path, opened):  # the rows this array picks are no longer where it picks them
                raise StoreError(
                    f"{path} was rewritten (by `shoulders gc` or an extraction) after this dask array "
                    "was made from it; call open_feature_set again"
                ) from error
            raise
        return pool(np.asarray(block, np.float32), pooling)

    blocks = [
        da.from_delayed(_delayed(load, c), shape=(counts[c], *shape), dtype=np.float32) for c in range(len(digests))
    ]
    if not blocks:
        return da.from_array(_empty_pooled(group, pooling))
    pooled = da.concatenate(blocks, axis=0)
    order = np.argsort(rows, kind="stable")
    picked = pooled[rows[order]]  # sorted: reads each chunk at most once per block
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return picked[inverse].rechunk({0: size})


def _delayed(function, *args):
    import dask

    return dask.delayed(function, pure=True)(*args)


def open_views(
    path: Location,
    split: str = "train",
    *,
    manifest: Manifest = None,
    pooling: str = "avg",
    expect: Mapping[str, Any] | None = None,
) -> FeatureSet:
    """Read the augmented views of one split, pooled per view.

    Parameters
    ----------
    path : path-like or URL
        A views store (see :func:`pipeline.store.layout.views_path`).
    split : str
    manifest, pooling, expect
        As :func:`open_feature_set`.

    Returns
    -------
    FeatureSet
        ``X`` of shape (n_samples, K, width) (or the unpooled maps for 'none').
    """
    check_pooling(pooling)

    def views_group() -> zarr.Group:
        group = open_store(path, expect=expect)
        if group.attrs.get("kind") != "views":
            raise StoreError(f"{path} is a feature store, not a views store")
        if not int(group.attrs.get("views") or 0):
            raise ValueError(f"{path} has no augmented views: set extract.augment.views > 0 and run `dvc repro`")
        return group

    def read(group: zarr.Group) -> FeatureSet:
        all_records = manifest_records(manifest, path)
        records = _split_records(all_records, split)
        try:
            rows = _rows_of(group, path, records)
        except StoreError:
            raise ValueError(
                f"{path} has no views of every {split} image (views are made of the training images, "
                "and of val and test with extract.augment.tta: true); run `dvc repro`"
            ) from None
        X = np.stack(
            [
                _gathered(group, path, {split: rows}, (pooling,), view)[split][pooling]
                for view in range(int(group.attrs["views"]))
            ],
            axis=1,
        )
        return _feature_set(group, records, all_records, X)

    return read_consistently(path, views_group, read)


def rows_in_every_store(stores: Sequence[Location]) -> set[str]:
    """The content hashes that each of ``stores`` holds a verified row of (none if one of them does not exist)."""
    common: set[str] | None = None
    for path in stores:
        if not filesystem.exists(filesystem.join(path, "zarr.json")):
            return set()
        group = zarr.open_group(str(filesystem.normalize(path)), mode="r")
        rows = int(group.attrs.get("rows") or 0) if group.attrs.get("shoulders_store") == STORE_FORMAT else 0
        have = set(group["sha256"][:rows].tolist()) if rows else set()
        common = have if common is None else common & have
    return common or set()


@dataclass(frozen=True)
class StoreInfo:
    key: str
    path: Location
    rows: int
    pending: bool  # an extraction is in progress or was interrupted
    identity: dict
    feature_shape: tuple[int, ...]


def list_feature_sets(features_dir: Location = "features") -> list[StoreInfo]:
    """Describe every store under ``features_dir`` (a path or an fsspec URL), sorted by key."""
    infos = []
    for path in filesystem.glob(filesystem.normalize(features_dir), "*.zarr"):
        try:
            group = zarr.open_group(str(path), mode="r")
        except (FileNotFoundError, ValueError) as error:
            log.warning("skipping %s: not a readable Zarr group (%s)", path, error)
            continue
        attrs = group.attrs
        infos.append(
            StoreInfo(
                key=store_name(path),
                path=path,
                rows=int(attrs.get("rows") or 0),
                pending=bool(attrs.get("pending")),
                identity=dict(attrs.get("identity") or {}),
                feature_shape=tuple(attrs.get("feature_shape") or ()),
            )
        )
    return infos
