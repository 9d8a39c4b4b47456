"""One writer per store: an exclusive lock held while a store is written (extraction, gc).

Two extractions writing one store at once would both plan the same rows, race
on its attributes and swap, and one of them would die half-way. So
:class:`pipeline.store.writer.StoreWriter` (and ``shoulders gc``) first takes
:func:`store_lock`: ``fcntl.flock`` on ``<features>/.incomplete/<key>.lock``
(``views-<key>.lock`` for a views store), a file that outlives the store's own
folder being built and swapped. The second process does not wait: it stops at
once with "another extraction of <key> is running (pid …)", the pid read from
the lock file, which its holder writes after taking it. Readers take no lock:
one under way when a writer swaps a rewritten store in starts over on it
(:func:`pipeline.store.reader.read_consistently`, whose module says why).

Why ``flock`` and not the ``filelock`` package: the kernel releases a flock
when its holder dies, SIGKILL included, so a killed extraction leaves no stale
lock to clean up before the resume; and the holder's pid can live in the lock
file itself (``filelock`` truncates the lock file when it opens it, so a
waiting process would erase the holder's pid, and it records a pid only for
its soft locks). POSIX only (Linux, macOS), as the project is. Stores at
fsspec URLs (object stores) have no such lock: there, run one extraction per
store at a time (a Dask extraction's workers write disjoint chunks under the
one lock of their coordinator).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.store import filesystem
from pipeline.store.filesystem import Location
from pipeline.store.layout import INCOMPLETE_DIR, StoreError, store_name

log = logging.getLogger(__name__)


class StoreBusyError(StoreError):
    """Another process is writing the store."""


def lock_path(store: Location, *, views: bool = False) -> Path:
    """The lock file of the store at ``store`` (a local path): beside the partial stores of its folder."""
    prefix = "views-" if views else ""
    return Path(filesystem.parent(store)) / INCOMPLETE_DIR / f"{prefix}{store_name(store)}.lock"


class StoreLock:
    """The held lock of one store; :meth:`release` (or closing the process) lets the next writer in."""

    def __init__(self, handle: IO[str] | None, path: Path | None):
        self._handle, self.path = handle, path

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def store_lock(store: Location, *, views: bool = False, what: str = "extraction") -> StoreLock:
    """Take the lock of ``store`` now, or raise naming the process that holds it.

    Raises
    ------
    StoreBusyError
        ``another <what> of <key> is running (pid N)``.
    """
    if filesystem.is_url(store):
        log.info("%s is not on a local disk: it is not locked; run one extraction of it at a time", store)
        return StoreLock(None, None)
    path = lock_path(store, views=views)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="ascii")  # never truncated on open: the holder's pid stays readable
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            handle.close()
            raise
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        key = ("views/" if views else "") + store_name(store)
        raise StoreBusyError(
            f"another extraction of {key} is running (pid {holder}); this {what} stopped "
            f"before touching {store}: let that one finish, then rerun (lock: {path})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return StoreLock(handle, path)


@contextlib.contextmanager
def locked(store: Location, *, views: bool = False, what: str = "extraction") -> Iterator[StoreLock]:
    """:func:`store_lock` for the duration of a ``with`` block."""
    lock = store_lock(store, views=views, what=what)
    try:
        yield lock
    finally:
        lock.release()
