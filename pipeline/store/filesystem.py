"""Where stores live: local paths, or any URL fsspec reaches (s3://, gs://, memory://, ...).

Feature stores are Zarr groups that zarr opens from either. What zarr does
not do — check that a store exists, rename a finished store into place,
delete an old one, list stores — is done here, with ``os`` on local paths
(where a rename is atomic) and with the fsspec filesystem of the URL
otherwise (where a "rename" of a directory is a copy and a delete). Local
locations are :class:`pathlib.Path`; URLs stay strings, since ``Path`` would
fold their ``//``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path

Location = str | Path


def is_url(location: Location) -> bool:
    return "://" in str(location)


def normalize(location: Location) -> Location:
    """A URL as a string, anything else as a Path."""
    return str(location) if is_url(location) else Path(location)


def _fs(location: str):
    import fsspec

    return fsspec.core.url_to_fs(location)


def join(location: Location, *parts: str) -> Location:
    if is_url(location):
        return posixpath.join(str(location).rstrip("/"), *parts)
    return Path(location).joinpath(*parts)


def parent(location: Location) -> Location:
    if is_url(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return Path(location).parent


def name(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def exists(location: Location) -> bool:
    if is_url(location):
        fs, path = _fs(str(location))
        return fs.exists(path)
    return Path(location).exists()


def makedirs(location: Location) -> None:
    if is_url(location):
        fs, path = _fs(str(location))
        fs.makedirs(path, exist_ok=True)
    else:
        Path(location).mkdir(parents=True, exist_ok=True)


def move(source: Location, target: Location) -> None:
    """Rename ``source`` to ``target`` (atomic on a local file system)."""
    if is_url(source):
        fs, src = _fs(str(source))
        fs.mv(src, _fs(str(target))[1], recursive=True)
    else:
        os.replace(source, target)


def remove(location: Location) -> None:
    """Delete a store (a directory tree) if it exists."""
    if is_url(location):
        fs, path = _fs(str(location))
        if fs.exists(path):
            fs.rm(path, recursive=True)
    elif Path(location).exists():
        shutil.rmtree(location)


def remove_file(location: Location) -> None:
    """Delete one file if it exists."""
    if is_url(location):
        fs, path = _fs(str(location))
        if fs.exists(path):
            fs.rm_file(path)
    else:
        Path(location).unlink(missing_ok=True)


def glob(location: Location, pattern: str) -> list[Location]:
    """Entries of ``location`` matching ``pattern``, sorted, as locations of the same kind."""
    if is_url(location):
        fs, path = _fs(str(location))
        return sorted(fs.unstrip_protocol(match) for match in fs.glob(posixpath.join(path, pattern)))
    return sorted(Path(location).glob(pattern))
