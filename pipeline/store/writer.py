"""Writing stores: add the rows of images not yet in a store, chunk by chunk, resumably, then prove them.

:class:`StoreWriter` serves feature stores and views stores alike (a views
store has ``views=K``). Given the images an extraction needs (their content
hashes), :meth:`StoreWriter.plan` finds those without a row and appends rows
for them at the end — every other row stays as it is — and returns one
:class:`ChunkWrite` per chunk (and view) to compute. Growing K adds the new
views of every row. Each chunk is written atomically by zarr's local store and
ticked in ``done`` only after it is written; the append in progress is
recorded (``pending``), so a killed run resumes from the last written chunk
and ends identical to an uninterrupted one. :meth:`StoreWriter.finalize` reads
every chunk written back, refuses NaN/Inf, records each chunk's digest, moves
``rows`` to the end of the append and logs the run in the store's ``runs``.
Readers only ever see rows below ``rows``.

One process writes a store at a time: the writer holds the store's lock
(:mod:`pipeline.store.lock`) from opening to :meth:`StoreWriter.finalize` (or
:meth:`StoreWriter.close`; use it as a context manager), and a second writer
stops at once naming the first one's pid.

The store is updated in place when its identity matches; a store of another
identity is never mixed into: a new one is built under
``<features>/.incomplete/<key>-<fingerprint>.zarr`` (resumable too) and swapped
into place when complete, so the previous store survives until then. Local
paths and fsspec URLs are both served (:mod:`pipeline.store.locations`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import zarr

from pipeline.provenance import fingerprint
from pipeline.store import locations
from pipeline.store.integrity import check_finite, chunk_digest, load_chunk
from pipeline.store.layout import (INCOMPLETE_DIR, STORE_FORMAT, StoreError, create_array, create_index, n_chunks,
                                   remove_stale_temp_files, store_name)
from pipeline.store.locations import Location
from pipeline.store.lock import locked, store_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkWrite:
    """Rows ``rows`` of chunk ``chunk`` (of view ``view``) to compute and write."""

    chunk: int
    rows: range
    view: Optional[int] = None


def _json(mapping: Mapping[str, Any]) -> dict:
    # As zarr stores attributes, so that comparisons with what a store holds are exact.
    return json.loads(json.dumps(dict(mapping)))


def digest_of(hashes: Sequence[str]) -> str:
    """A short digest of a list of content hashes (what an append in progress is for)."""
    return fingerprint({"sha256": list(hashes)}, length=20)


def create_group(path: Location, attrs: Mapping[str, Any], fill: Callable[[zarr.Group], None]) -> zarr.Group:
    """Create the group at ``path`` atomically: initialised under a temporary name, then renamed over ``path``."""
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


def rows_missing(path: Location, identity: Mapping[str, Any], wanted: Sequence[str], *,
                 views: Optional[int] = None) -> Optional[int]:
    """How many images of ``wanted`` the store at ``path`` lacks (views: or lacks a view of), read from its
    attributes and index alone; ``None`` when there is no store of this identity or an append is pending."""
    if read_identity(path) != _json(identity):
        return None
    group = zarr.open_group(str(locations.normalize(path)), mode="r")
    attrs = group.attrs
    if attrs.get("pending") or (views is not None and int(attrs.get("views") or 0) != views):
        return None
    if "sha256" not in group:
        return None
    rows = int(attrs["rows"])
    have = set(group["sha256"][:rows].tolist()) if rows else set()
    return len(set(wanted) - have)


def stored_rows(path: Location) -> int:
    """Verified rows of the store at ``path`` (0 when there is none)."""
    if not locations.exists(locations.join(path, "zarr.json")):
        return 0
    return int(zarr.open_group(str(locations.normalize(path)), mode="r").attrs.get("rows") or 0)


def stored_hashes(path: Location) -> set[str]:
    """The content hashes of the verified rows of the store at ``path`` (empty when there is none)."""
    rows = stored_rows(path)
    if not rows:
        return set()
    return set(zarr.open_group(str(locations.normalize(path)), mode="r")["sha256"][:rows].tolist())


def read_identity(path: Location) -> Optional[dict]:
    """The identity recorded in the store at ``path``, or ``None`` when there is no readable store of this format."""
    if not locations.exists(locations.join(path, "zarr.json")):
        return None
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs
    except (FileNotFoundError, ValueError):
        return None
    return dict(attrs["identity"]) if attrs.get("shoulders_store") == STORE_FORMAT else None


class StoreWriter:
    """Open the store of one identity (creating or resuming it), plan and write missing rows, finalise.

    Parameters
    ----------
    path : Location
        The store (``store_path(features, key)`` or ``views_path(features, key)``).
    identity : mapping
        What determines the features (:func:`pipeline.provenance.identity_of`).
    provenance : mapping
        The full provenance of this run's features (recorded with the store).
    feature_shape : tuple of int
    dtype : str
    chunk_rows : int
    views : int, optional
        K, for a views store; ``None`` for a feature store.
    """

    def __init__(self, path: Location, identity: Mapping[str, Any], provenance: Mapping[str, Any], *,
                 feature_shape: tuple[int, ...], dtype: str, chunk_rows: int, views: Optional[int] = None):
        self.final_path = locations.normalize(path)
        self.identity = _json(identity)
        self.provenance = _json(provenance)
        self.feature_shape, self.dtype, self.views = tuple(feature_shape), dtype, views
        # Before anything is read or written: a second writer stops here, naming the first.
        self.lock = store_lock(self.final_path, views=views is not None)
        try:
            self.path = self._choose_path(int(chunk_rows))
            self.group = self._open_or_create(int(chunk_rows))
        except BaseException:
            self.lock.release()
            raise
        self.chunk_rows = int(self.group.attrs["chunk_rows"])
        self.started = time.perf_counter()

    def close(self) -> None:
        """Let the next writer in (finalize does it too; so does this process ending, however it ends)."""
        self.lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ opening

    def _choose_path(self, chunk_rows: int) -> Location:
        """In place when the final store has this identity; else a partial store named by its fingerprint."""
        existing = read_identity(self.final_path)
        if existing == self.identity:
            return self.final_path
        if existing is not None:
            log.info("%s was made with another identity (%s); building a new store beside it",
                     self.final_path, ", ".join(k for k in self.identity if existing.get(k) != self.identity[k]))
        stem = store_name(self.final_path)
        prefix = "views-" if self.views is not None else ""
        return locations.join(locations.parent(self.final_path), INCOMPLETE_DIR,
                              f"{prefix}{stem}-{fingerprint(self.identity)}.zarr")

    def _open_or_create(self, chunk_rows: int) -> zarr.Group:
        if locations.exists(locations.join(self.path, "X", "zarr.json")):
            group = zarr.open_group(str(self.path), mode="r+")
            if group.attrs.get("identity") != self.identity:
                raise StoreError(f"{self.path} has another identity; delete it to start over")
            if tuple(group.attrs["feature_shape"]) != self.feature_shape or group.attrs["dtype"] != self.dtype:
                raise StoreError(f"{self.path} holds rows of shape {group.attrs['feature_shape']} "
                                 f"{group.attrs['dtype']}; this extraction gives {self.feature_shape} {self.dtype}")
            remove_stale_temp_files(self.path)
            return group
        shape_x = (0, *([0] if self.views is not None else []), *self.feature_shape)
        chunks_x = (chunk_rows, *([1] if self.views is not None else []), *self.feature_shape)

        def fill(group: zarr.Group) -> None:
            create_array(group, "X", shape_x, chunks_x, self.dtype)
            create_index(group, 0)
            create_array(group, "done", (0, *([0] if self.views is not None else [])),
                         (1, *([1] if self.views is not None else [])), "uint8")

        return create_group(self.path, {
            "shoulders_store": STORE_FORMAT, "kind": "views" if self.views is not None else "features",
            "identity": self.identity, "identity_fingerprint": fingerprint(self.identity),
            "feature_shape": list(self.feature_shape), "dtype": self.dtype, "chunk_rows": chunk_rows,
            "views": 0 if self.views is not None else None, "rows": 0, "chunk_digests": [], "pending": None,
            "runs": []}, fill)

    # ------------------------------------------------------------------ planning

    @property
    def rows(self) -> int:
        """Verified rows."""
        return int(self.group.attrs["rows"])

    def row_hashes(self) -> list[str]:
        """The content hash of every row of the store (verified and pending), in row order."""
        n = self.group["sha256"].shape[0]
        return [str(h) for h in self.group["sha256"][:n].tolist()] if n else []

    def plan(self, wanted: Sequence[str]) -> tuple[list[ChunkWrite], dict]:
        """Append rows for the hashes of ``wanted`` that have none (and, for views, add new views); resume an
        append of the same rows that was interrupted.

        Parameters
        ----------
        wanted : sequence of str
            The content hashes this extraction needs (duplicates are one row).

        Returns
        -------
        writes : list of ChunkWrite
            What to compute, in row order (view by view).
        counts : dict
            ``images`` (distinct wanted), ``reused`` (with a row already), ``computed`` (rows added).
        """
        wanted = sorted(set(wanted))
        attrs = self.group.attrs
        views_before = int(attrs["views"] or 0)
        views_after = self.views if self.views is not None else views_before
        have = self.row_hashes()
        verified = set(have[:self.rows])
        new = [h for h in wanted if h not in verified]
        pending = attrs.get("pending")
        if pending and (pending["sha256_digest"] != digest_of(new) or pending["views"] != views_after):
            log.info("%s: an interrupted extraction of other images is dropped (%d rows)", self.path,
                     pending["rows_to"] - pending["rows_from"])
            pending = None
        if pending is None:
            if not new and views_after == views_before:
                return [], {"images": len(wanted), "reused": len(wanted), "computed": 0}
            self._start_append(new, views_before, views_after)
        else:
            log.info("%s: resuming an interrupted extraction (%d rows)", self.path, len(new))
        writes = self._pending_writes()
        counts = {"images": len(wanted), "reused": len(wanted) - len(new), "computed": len(new)}
        return writes, counts

    def _start_append(self, new: Sequence[str], views_before: int, views_after: int) -> None:
        start, end = self.rows, self.rows + len(new)
        X, index, done = self.group["X"], self.group["sha256"], self.group["done"]
        # Rows past `rows` are left over from a dropped append: overwritten now.
        index.resize((end,))
        if new:
            index[start:end] = np.asarray(new, dtype=str)
        X.resize((end, *([views_after] if self.views is not None else []), *self.feature_shape))
        chunks = n_chunks(end, self.chunk_rows)
        done.resize((chunks, *([views_after] if self.views is not None else [])))
        flags = np.asarray(done[...]) if done.size else np.zeros(done.shape, np.uint8)
        first = start // self.chunk_rows
        if self.views is None:
            flags[first:] = 0
        else:
            flags[first:, :] = 0                  # new rows: every view
            flags[:, views_before:] = 0           # new views: every row
        if done.size:
            done[...] = flags
        self.group.attrs["pending"] = {"rows_from": start, "rows_to": end, "views_from": views_before,
                                       "views": views_after, "sha256_digest": digest_of(new)}

    def _pending_writes(self) -> list[ChunkWrite]:
        pending = self.group.attrs["pending"]
        start, end = pending["rows_from"], pending["rows_to"]
        done = np.asarray(self.group["done"][...])
        writes = []
        for view in ([None] if self.views is None else range(pending["views"])):
            for chunk in range(n_chunks(end, self.chunk_rows)):
                flag = done[chunk] if view is None else done[chunk, view]
                if flag:
                    continue
                first = chunk * self.chunk_rows
                if view is None or view < pending["views_from"]:
                    first = max(first, start)     # an old view (or the features) of old rows is kept
                rows = range(first, min((chunk + 1) * self.chunk_rows, end))
                if len(rows):
                    writes.append(ChunkWrite(chunk, rows, view))
        return writes

    # ------------------------------------------------------------------ writing

    def write(self, write: ChunkWrite, block: np.ndarray) -> None:
        """Write the rows of one chunk (of one view), then tick it as done (see :func:`write_chunk`)."""
        write_chunk(self.group, write, block)

    def finalize(self, run: Optional[Mapping[str, Any]] = None) -> Location:
        """Read every chunk this append wrote back, record its digest, count its rows and log the run.

        ``run`` is added to the store's ``runs`` (what computed the rows: runtime,
        device, versions...), with the rows before and after and the seconds.
        """
        try:
            return self._finalize(run)
        finally:
            self.close()

    def _finalize(self, run: Optional[Mapping[str, Any]]) -> Location:
        pending = self.group.attrs.get("pending")
        if pending is None:
            return self._swap()
        missing = self._pending_writes()
        if missing:
            raise StoreError(f"cannot finalise {self.path}: {len(missing)} chunk(s) not written, first "
                             f"chunk {missing[0].chunk}")
        end = pending["rows_to"]
        digests = list(self.group.attrs["chunk_digests"])
        first = pending["rows_from"] // self.chunk_rows if pending["views_from"] == pending["views"] or \
            self.views is None else 0
        X = self.group["X"]
        views = [None] if self.views is None else list(range(pending["views"]))
        for chunk in range(first, n_chunks(end, self.chunk_rows)):
            entry = []
            for view in views:
                block = load_chunk(self.path, X, chunk, end, view)
                check_finite(block, f"{self.path}: chunk {chunk}")
                entry.append(chunk_digest(block, chunk, view))
            value = entry[0] if self.views is None else entry
            digests[chunk:chunk + 1] = [value]
        del digests[n_chunks(end, self.chunk_rows):]
        runs = list(self.group.attrs["runs"])
        runs.append({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "rows_before": pending["rows_from"], "rows_after": end,
                     "views_before": pending["views_from"] if self.views is not None else None,
                     "views_after": pending["views"] if self.views is not None else None,
                     "seconds": round(time.perf_counter() - self.started, 3), "provenance": self.provenance,
                     **dict(run or {})})
        self.group.attrs.update({"chunk_digests": digests, "rows": end, "runs": runs, "pending": None,
                                 "views": pending["views"] if self.views is not None else None})
        return self._swap()

    def _swap(self) -> Location:
        if self.path != self.final_path:
            swap_into_place(self.path, self.final_path)
            self.path = self.final_path
            self.group = zarr.open_group(str(self.final_path), mode="r+")
        log.info("store complete: %s (%d rows)", self.final_path, self.rows)
        return self.final_path


def write_chunk(group: zarr.Group, write: ChunkWrite, block: np.ndarray) -> None:
    """Write the rows of one chunk (of one view) into an open store, then tick it as done (in that order).

    Chunks are disjoint files, so several processes (Dask workers) may write
    different chunks of one store at once without locking.
    """
    X = group["X"]
    feature_shape = tuple(group.attrs["feature_shape"])
    expected = (len(write.rows), *feature_shape)
    if block.shape != expected:
        raise ValueError(f"chunk {write.chunk} must have shape {expected}. Received: {block.shape}")
    rows = slice(write.rows.start, write.rows.stop)
    block = block.astype(X.dtype, copy=False)
    if write.view is None:
        X[rows] = block
        group["done"][write.chunk] = 1
    else:
        X[rows, write.view] = block
        group["done"][write.chunk, write.view] = 1


def write_views_marker(path: Location, identity: Mapping[str, Any]) -> Location:
    """The views store of ``extract.augment.views: 0``: attributes only, no arrays (and no backbone run)."""
    path = locations.normalize(path)
    if read_identity(path) == _json(identity) and zarr.open_group(str(path), mode="r").attrs.get("views") == 0:
        return path
    with locked(path, views=True):
        create_group(path, {"shoulders_store": STORE_FORMAT, "kind": "views", "identity": _json(identity),
                            "identity_fingerprint": fingerprint(_json(identity)), "views": 0, "rows": 0},
                     lambda g: None)
    log.info("views store %s: no views asked for (extract.augment.views: 0)", path)
    return path
