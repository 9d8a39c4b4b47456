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

Chunks of the verified rows that fail their digests (a file missing, corrupt,
changed or swapped: :func:`pipeline.store.repair.find_damage`) are part of the
same append: :meth:`StoreWriter.plan` recomputes exactly their rows (``repair``
in ``pending``, so a killed repair resumes too), and only the chunks written
get new digests.

One process writes a store at a time: the writer holds the store's lock
(:mod:`pipeline.store.lock`) from opening to :meth:`StoreWriter.finalize` (or
:meth:`StoreWriter.close`; use it as a context manager), and a second writer
stops at once naming the first one's pid.

The store is updated in place when its identity matches; a store of another
identity is never mixed into: a new one is built under
``<features>/.incomplete/<key>-<fingerprint>.zarr`` (resumable too) and swapped
into place when complete, so the previous store survives until then. Local
paths and fsspec URLs are both served (:mod:`pipeline.store.filesystem`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import zarr

from pipeline.provenance import fingerprint
from pipeline.store import filesystem
from pipeline.store.contents import as_stored, read_identity
from pipeline.store.filesystem import Location
from pipeline.store.integrity import check_finite, chunk_digest, chunk_problems, load_chunk
from pipeline.store.layout import (
    INCOMPLETE_DIR,
    STORE_FORMAT,
    StoreError,
    chunk_file,
    create_array,
    create_index,
    n_chunks,
    remove_stale_temp_files,
    store_name,
)
from pipeline.store.lock import locked, store_lock
from pipeline.store.repair import ChunkKey, as_list, chunk_order, failing, find_damage, repairs_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkWrite:
    """Rows ``rows`` of chunk ``chunk`` (of view ``view``) to compute and write."""

    chunk: int
    rows: range
    view: int | None = None


def digest_of(hashes: Sequence[str]) -> str:
    """A short digest of a list of content hashes (what an append in progress is for)."""
    return fingerprint({"sha256": list(hashes)}, length=20)


def create_group(path: Location, attrs: Mapping[str, Any], fill: Callable[[zarr.Group], None]) -> zarr.Group:
    """Create the group at ``path`` atomically: initialised under a temporary name, then renamed over ``path``."""
    filesystem.makedirs(filesystem.parent(path))
    tmp = filesystem.join(filesystem.parent(path), filesystem.name(path) + f".{uuid.uuid4().hex[:8]}.new")
    group = zarr.open_group(str(tmp), mode="w")
    group.attrs.update(dict(attrs))
    fill(group)
    swap_into_place(tmp, path)
    return zarr.open_group(str(path), mode="r+")


def swap_into_place(source: Location, target: Location) -> None:
    """Rename ``source`` over ``target``; an existing ``target`` is moved aside first and removed last,
    so a failure in between still leaves one whole store on disk."""
    if filesystem.exists(target):
        old = filesystem.join(filesystem.parent(target), filesystem.name(target) + f".{uuid.uuid4().hex[:8]}.old")
        filesystem.move(target, old)
        filesystem.move(source, target)
        filesystem.remove(old)
    else:
        filesystem.makedirs(filesystem.parent(target))
        filesystem.move(source, target)


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

    def __init__(
        self,
        path: Location,
        identity: Mapping[str, Any],
        provenance: Mapping[str, Any],
        *,
        feature_shape: tuple[int, ...],
        dtype: str,
        chunk_rows: int,
        views: int | None = None,
    ):
        self.final_path = filesystem.normalize(path)
        self.identity = as_stored(identity)
        self.provenance = as_stored(provenance)
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

    def __enter__(self) -> StoreWriter:
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
            log.info(
                "%s was made with another identity (%s); building a new store beside it",
                self.final_path,
                ", ".join(k for k in self.identity if existing.get(k) != self.identity[k]),
            )
        elif filesystem.exists(self.final_path):
            log.warning(
                "%s is not a readable store of format %d (its zarr.json is damaged or of another "
                "version); building a new one beside it, which replaces it when complete",
                self.final_path,
                STORE_FORMAT,
            )
        stem = store_name(self.final_path)
        prefix = "views-" if self.views is not None else ""
        return filesystem.join(
            filesystem.parent(self.final_path), INCOMPLETE_DIR, f"{prefix}{stem}-{fingerprint(self.identity)}.zarr"
        )

    def _open_or_create(self, chunk_rows: int) -> zarr.Group:
        if filesystem.exists(filesystem.join(self.path, "X", "zarr.json")):
            group = zarr.open_group(str(self.path), mode="r+")
            if group.attrs.get("identity") != self.identity:
                raise StoreError(f"{self.path} has another identity; delete it to start over")
            if tuple(group.attrs["feature_shape"]) != self.feature_shape or group.attrs["dtype"] != self.dtype:
                raise StoreError(
                    f"{self.path} holds rows of shape {group.attrs['feature_shape']} "
                    f"{group.attrs['dtype']}; this extraction gives {self.feature_shape} {self.dtype}"
                )
            remove_stale_temp_files(self.path)
            return group
        shape_x = (0, *([0] if self.views is not None else []), *self.feature_shape)
        chunks_x = (chunk_rows, *([1] if self.views is not None else []), *self.feature_shape)

        def fill(group: zarr.Group) -> None:
            create_array(group, "X", shape_x, chunks_x, self.dtype)
            create_index(group, 0)
            create_array(
                group,
                "done",
                (0, *([0] if self.views is not None else [])),
                (1, *([1] if self.views is not None else [])),
                "uint8",
            )

        return create_group(
            self.path,
            {
                "shoulders_store": STORE_FORMAT,
                "kind": "views" if self.views is not None else "features",
                "identity": self.identity,
                "identity_fingerprint": fingerprint(self.identity),
                "feature_shape": list(self.feature_shape),
                "dtype": self.dtype,
                "chunk_rows": chunk_rows,
                "views": 0 if self.views is not None else None,
                "rows": 0,
                "chunk_digests": [],
                "pending": None,
                "runs": [],
            },
            fill,
        )

    # ------------------------------------------------------------------ planning

    @property
    def rows(self) -> int:
        """Verified rows."""
        return int(self.group.attrs["rows"])

    def row_hashes(self) -> list[str]:
        """The content hash of every row of the store (verified and pending), in row order."""
        n = self.group["sha256"].shape[0]
        return [str(h) for h in self.group["sha256"][:n].tolist()] if n else []

    def plan(self, wanted: Sequence[str], repair: Sequence[ChunkKey] | None = None) -> tuple[list[ChunkWrite], dict]:
        """Append rows for the hashes of ``wanted`` that have none (and, for views, add new views), recompute the
        rows of damaged chunks; resume an append of the same rows that was interrupted.

        Parameters
        ----------
        wanted : sequence of str
            The content hashes this extraction needs (duplicates are one row).
        repair : sequence of (chunk, view), optional
            Chunks of the verified rows that fail their digests, from a
            :func:`~pipeline.store.repair.find_damage` of this store the caller
            made (only they are read again here); None: found here (every chunk
            is read back).

        Returns
        -------
        writes : list of ChunkWrite
            What to compute, in row order (view by view).
        counts : dict
            ``images`` (distinct wanted), ``reused`` (of those, the rows this run
            leaves as they are: old ones, and those an interrupted run wrote),
            ``computed`` (rows, or for views image × view passes, this run
            computes) and ``repaired`` (of those, the old rows of damaged chunks).

        Raises
        ------
        StoreError
            If the store is damaged in a way rows cannot repair (the store and what to do named).
        """
        wanted = sorted(set(wanted))
        attrs = self.group.attrs
        views_before = int(attrs["views"] or 0)
        views_after = self.views if self.views is not None else views_before
        have = self.row_hashes()
        verified = set(have[: self.rows])
        new = [h for h in wanted if h not in verified]
        if repair is None:
            damaged = set(find_damage(self.path).chunks)
        else:  # read again under the lock: the caller looked before taking it
            damaged = {(chunk, view) for chunk, view, _ in chunk_problems(self.path, self.group, only=set(repair))}
        damaged = {(chunk, view) for chunk, view in damaged if view is None or view < views_after}
        pending = attrs.get("pending")
        if pending and (pending["sha256_digest"] != digest_of(new) or pending["views"] != views_after):
            log.info(
                "%s: an interrupted extraction of other images is dropped (%d rows)",
                self.path,
                pending["rows_to"] - pending["rows_from"],
            )
            damaged |= repairs_of(pending)  # its repairs are still to do
            pending = None
        if pending is None:
            if not new and views_after == views_before and not damaged:
                return [], {"images": len(wanted), "reused": len(wanted), "computed": 0, "repaired": 0}
            self._start_append(new, views_before, views_after, damaged)
        else:
            self._add_repairs(damaged - repairs_of(pending))
        writes = self._pending_writes()
        computed = sum(len(w.rows) for w in writes)
        if pending is not None:
            planned = sum(len(w.rows) for w in self._pending_writes(done_too=True))
            log.info(
                "%s: resuming an interrupted extraction: %d of its %d rows were written before, %d to compute",
                self.path,
                planned - computed,
                planned,
                computed,
            )
        repairs = repairs_of(self.group.attrs["pending"])
        repairing = [w for w in writes if (w.chunk, w.view) in repairs]
        repaired = sum(len(range(w.rows.start, min(w.rows.stop, self.rows))) for w in repairing)
        if repairing:
            log.info(
                "%s: %s (missing, corrupt, changed or swapped): recomputing %d %s",
                self.path,
                failing([(w.chunk, w.view) for w in repairing]),
                repaired,
                "row(s)" if self.views is None else "image view(s)",
            )
        hashes = self.row_hashes()
        touched = {hashes[i] for w in writes for i in w.rows}
        counts = {
            "images": len(wanted),
            "reused": sum(h not in touched for h in wanted),
            "computed": computed,
            "repaired": repaired,
        }
        return writes, counts

    def _start_append(self, new: Sequence[str], views_before: int, views_after: int, repairs: set[ChunkKey]) -> None:
        start, end = self.rows, self.rows + len(new)
        X, index, done = self.group["X"], self.group["sha256"], self.group["done"]
        # Rows past `rows` are left over from a dropped append: overwritten now.
        index.resize((end,))
        if new:
            index[start:end] = np.asarray(new, dtype=str)
        X.resize((end, *([views_after] if self.views is not None else []), *self.feature_shape))
        chunks = n_chunks(end, self.chunk_rows)
        done.resize((chunks, *([views_after] if self.views is not None else [])))
        # Written from what the store proves, not read from `done`: the chunks (and views) of verified rows
        # before the first new one are done, everything else is to write. A damaged `done` is rewritten so.
        first = start // self.chunk_rows
        flags = np.zeros(done.shape, np.uint8)
        if self.views is None:
            flags[:first] = 1
        else:
            flags[:first, :views_before] = 1
        for chunk, view in repairs:
            flags[chunk if view is None else (chunk, view)] = 0
        self._discard(repairs)
        if done.size:
            done[...] = flags
        self.group.attrs["pending"] = {
            "rows_from": start,
            "rows_to": end,
            "views_from": views_before,
            "views": views_after,
            "sha256_digest": digest_of(new),
            "repair": as_list(repairs),
        }

    def _add_repairs(self, repairs: set[ChunkKey]) -> None:
        """Add damaged chunks to the append in progress (found when resuming it)."""
        if not repairs:
            return
        done = self.group["done"]
        self._discard(repairs)
        for chunk, view in repairs:
            done[chunk if view is None else (chunk, view)] = 0
        pending = dict(self.group.attrs["pending"])
        pending["repair"] = as_list(repairs_of(pending) | repairs)
        self.group.attrs["pending"] = pending

    def _discard(self, repairs: set[ChunkKey]) -> None:
        """Delete the files of damaged chunks: a partial chunk (the last) is written over what its file holds,
        which must not be bytes that fail to decode."""
        X = self.group["X"]
        for chunk, view in repairs:
            filesystem.remove_file(chunk_file(self.path, X, "X", chunk, view))

    def _pending_writes(self, *, done_too: bool = False) -> list[ChunkWrite]:
        """The chunk writes of the append in progress not yet done (``done_too``: all of them)."""
        pending = self.group.attrs["pending"]
        start, end = pending["rows_from"], pending["rows_to"]
        repairs = repairs_of(pending)
        written = self._written(pending)
        done = np.asarray(self.group["done"][...])
        writes = []
        for view in [None] if self.views is None else range(pending["views"]):
            for chunk in range(n_chunks(end, self.chunk_rows)):
                flag = done[chunk] if view is None else done[chunk, view]
                if (flag and not done_too) or (chunk, view) not in written:
                    continue
                first = chunk * self.chunk_rows
                if (chunk, view) not in repairs and (view is None or view < pending["views_from"]):
                    first = max(first, start)  # an old view (or the features) of old rows is kept
                rows = range(first, min((chunk + 1) * self.chunk_rows, end))
                if len(rows):
                    writes.append(ChunkWrite(chunk, rows, view))
        return writes

    def _written(self, pending: Mapping[str, Any]) -> set[ChunkKey]:
        """The chunks (and views) the append ``pending`` writes: those of its new rows, of new views, repairs."""
        start, end = pending["rows_from"], pending["rows_to"]
        every = range(n_chunks(end, self.chunk_rows))
        of_new_rows = range(start // self.chunk_rows, n_chunks(end, self.chunk_rows)) if end > start else range(0)
        written = set(repairs_of(pending))
        for view in [None] if self.views is None else range(pending["views"]):
            chunks = every if view is not None and view >= pending["views_from"] else of_new_rows
            written |= {(chunk, view) for chunk in chunks}
        return written

    # ------------------------------------------------------------------ writing

    def write(self, write: ChunkWrite, block: np.ndarray) -> None:
        """Write the rows of one chunk (of one view), then tick it as done (see :func:`write_chunk`)."""
        write_chunk(self.group, write, block)

    def finalize(self, run: Mapping[str, Any] | None = None) -> Location:
        """Read every chunk this append wrote back, record its digest, count its rows and log the run.

        ``run`` is added to the store's ``runs`` (what computed the rows: runtime,
        device, versions...), with the rows before and after and the seconds.
        """
        try:
            return self._finalize(run)
        finally:
            self.close()

    def _finalize(self, run: Mapping[str, Any] | None) -> Location:
        pending = self.group.attrs.get("pending")
        if pending is None:
            return self._swap()
        missing = self._pending_writes()
        if missing:
            raise StoreError(
                f"cannot finalise {self.path}: {len(missing)} chunk(s) not written, first chunk {missing[0].chunk}"
            )
        end = pending["rows_to"]
        chunks = n_chunks(end, self.chunk_rows)
        digests = list(self.group.attrs["chunk_digests"])[:chunks]
        digests += [None] * (chunks - len(digests))
        if self.views is not None:  # fewer views than before: the others are gone
            digests = [entry[: pending["views"]] if isinstance(entry, list) else entry for entry in digests]
        X = self.group["X"]
        # Only the chunks this append wrote are read back and digested: every other one keeps the digest that
        # proves it (a chunk damaged meanwhile is never blessed with a new one).
        for chunk, view in sorted(self._written(pending), key=chunk_order):
            block = load_chunk(self.path, X, chunk, end, view)
            check_finite(block, f"{self.path}: chunk {chunk}" + ("" if view is None else f" of view {view}"))
            digest = chunk_digest(block, chunk, view)
            if view is None:
                digests[chunk] = digest
            else:
                entry = list(digests[chunk] or [])
                entry += [None] * (pending["views"] - len(entry))
                entry[view] = digest
                digests[chunk] = entry
        runs = list(self.group.attrs["runs"])
        runs.append(
            {
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows_before": pending["rows_from"],
                "rows_after": end,
                "views_before": pending["views_from"] if self.views is not None else None,
                "views_after": pending["views"] if self.views is not None else None,
                **({"repaired_chunks": as_list(repairs_of(pending))} if pending.get("repair") else {}),
                "seconds": round(time.perf_counter() - self.started, 3),
                "provenance": self.provenance,
                **dict(run or {}),
            }
        )
        self.group.attrs.update(
            {
                "chunk_digests": digests,
                "rows": end,
                "runs": runs,
                "pending": None,
                "views": pending["views"] if self.views is not None else None,
            }
        )
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
    path = filesystem.normalize(path)
    if read_identity(path) == as_stored(identity) and zarr.open_group(str(path), mode="r").attrs.get("views") == 0:
        return path
    with locked(path, views=True):
        create_group(
            path,
            {
                "shoulders_store": STORE_FORMAT,
                "kind": "views",
                "identity": as_stored(identity),
                "identity_fingerprint": fingerprint(as_stored(identity)),
                "views": 0,
                "rows": 0,
            },
            lambda g: None,
        )
    log.info("views store %s: no views asked for (extract.augment.views: 0)", path)
    return path
