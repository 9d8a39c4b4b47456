"""What prepare found in each file last time, so that the next run re-reads only the files that changed.

The prepare stage runs on every ``dvc repro`` (``always_changed`` in
dvc.yaml): for a CSV source DVC tracks the CSV, not the images it lists, so
only prepare itself can see an image overwritten in place. Decoding every image
on every run would make each ``dvc repro`` as slow as the first; this record
lets prepare trust what it found before for a file whose stat is unchanged.

An entry maps a file's absolute path to its stat when it was read (size,
mtime, ctime, inode), the time it was read, and what reading it found (sha256,
width, height, and the perceptual hash when one was computed). It is trusted
only when

- the file's size, mtime, ctime and inode are all as recorded: a write changes
  mtime and ctime, and a program can set mtime back but not ctime (only the
  system clock moves it), so an overwrite that restores the old mtime
  (``cp -p``, ``touch -d``, ``rsync -t``) is still seen;
- the file last changed at least :data:`RACY_NS` before it was read: a file
  written again within the same timestamp tick as its read could otherwise keep
  its stat (git's "racily clean" files). Such a file is read again next time,
  and trusted from then on;
- the record file is whole (its first line holds the sha256 of the rest) and was
  written by this format with the same Pillow and simplejpeg (another decoder
  may accept other files).

A file that is not trusted is hashed; when some entry has its sha256 (the file
was touched, copied or moved) what was found in those bytes is used, and only
other bytes are decoded.

Any doubt — a damaged, unreadable or foreign record, an entry of the wrong
shape — means the file is read again: a damaged record can make prepare slower,
never give it a wrong hash. (A record forged on purpose is no more of a threat
than the images themselves: whoever can write the cache folder can write those.)
A record that cannot be written is logged and skipped. Extraction checks every
file against its hash again when it reads it.

The record is not a DVC output (DVC deletes a stage's outputs before running
it): it lives in the shoulders cache folder (:func:`pipeline.cache_dir.cache_dir`),
``prepare/<digest of the source's absolute path>.json``, one per source, holding
the files the last run inspected; the least recently written beyond
:data:`MAX_SOURCES` are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import NamedTuple

from pipeline.cache_dir import cache_dir

log = logging.getLogger(__name__)

FORMAT = "shoulders-prepare-stat-cache 1"
# How long before its read a file must have last changed for its entry to be trusted: more than the
# timestamp granularity of common file systems (FAT: 2 s; ext4, APFS, NTFS: far finer).
RACY_NS = 2_000_000_000
# Records kept, one per source (the least recently written beyond this are removed).
MAX_SOURCES = 32
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Facts(NamedTuple):
    """What reading one image file found."""

    sha256: str
    width: int
    height: int
    phash: int | None  # the 64-bit perceptual hash, when it was computed


def record_file(source: str | Path) -> Path:
    """Where the record of the source ``source`` (a folder or a CSV file) is kept."""
    key = hashlib.sha256(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return cache_dir() / "prepare" / f"{key}.json"


def _decoders() -> dict[str, str | None]:
    import PIL

    try:
        import simplejpeg
    except ImportError:
        return {"pillow": PIL.__version__, "simplejpeg": None}
    return {"pillow": PIL.__version__, "simplejpeg": getattr(simplejpeg, "__version__", "unknown")}


def _stat_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


class StatCache:
    """The record of one source's files: :meth:`load`, :meth:`lookup` and :meth:`record`, then :meth:`save`.

    Parameters
    ----------
    path : Path
        The record file (:func:`record_file`).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._old: dict[str, tuple] = {}
        self._new: dict[str, tuple] = {}
        self._by_content: dict[str, Facts] = {}

    @classmethod
    def load(cls, path: Path) -> StatCache:
        """Read the record at ``path``; a missing, damaged or foreign one gives an empty record (logged)."""
        cache = cls(path)
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            return cache
        except OSError as error:
            log.warning("cannot read prepare's record of file stats %s (%s); every image is read", path, error)
            return cache
        header, _, body = raw.partition(b"\n")
        try:
            fmt, digest = header.decode("ascii").rsplit(" ", 1)
            ok = fmt == FORMAT and digest == hashlib.sha256(body).hexdigest()
            content = json.loads(body) if ok else None
        except (UnicodeDecodeError, ValueError):
            ok, content = False, None
        if not ok or not isinstance(content, dict) or not isinstance(content.get("entries"), dict):
            log.warning(
                "prepare's record of file stats %s is damaged or of another format; every image is read, "
                "and the record rewritten",
                path,
            )
            return cache
        if content.get("decoders") != _decoders():
            log.info(
                "the image decoders changed since %s was written (%s, now %s); every image is read",
                path,
                content.get("decoders"),
                _decoders(),
            )
            return cache
        cache._old = {name: tuple(entry) for name, entry in content["entries"].items() if _well_formed(entry)}
        cache._by_content = {entry[5]: Facts(*entry[5:]) for entry in cache._old.values()}
        return cache

    def lookup(self, file: str, stat: os.stat_result) -> Facts | None:
        """What was found in ``file`` when it was read, if its ``stat`` says it has not changed since."""
        entry = self._old.get(os.path.abspath(file))
        if entry is None or tuple(entry[:4]) != _stat_key(stat):
            return None
        if max(stat.st_mtime_ns, stat.st_ctime_ns) > entry[4] - RACY_NS:
            return None  # changed within RACY_NS of its read: a later write in the same tick could hide
        return Facts(*entry[5:])

    def by_content(self, sha256: str) -> Facts | None:
        """What was found in a file with these bytes (any path), if one was read: a file touched, copied or
        moved needs hashing, not decoding."""
        return self._by_content.get(sha256)

    def record(self, file: str, stat: os.stat_result, read_at_ns: int, facts: Facts) -> None:
        """Note what reading ``file`` (with ``stat``, taken before it was read at ``read_at_ns``) found."""
        self._new[os.path.abspath(file)] = (*_stat_key(stat), int(read_at_ns), *facts)

    def keep(self, file: str) -> None:
        """Note that ``file`` was found unchanged (:meth:`lookup`): its entry is kept as it is."""
        name = os.path.abspath(file)
        self._new[name] = self._old[name]

    @property
    def recorded(self) -> int:
        """Files noted by :meth:`record` or :meth:`keep` since the record was loaded."""
        return len(self._new)

    def save(self) -> None:
        """Write the files noted by :meth:`record` and :meth:`keep` (only those), atomically.

        A failure is logged, not raised: the next run then reads the files again.
        """
        body = json.dumps({"decoders": _decoders(), "entries": self._new}, separators=(",", ":")).encode("utf-8")
        text = f"{FORMAT} {hashlib.sha256(body).hexdigest()}\n".encode("ascii") + body
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(text)
            os.replace(tmp, self.path)
        except OSError as error:
            log.warning(
                "cannot write prepare's record of file stats %s (%s); the next run reads every image again",
                self.path,
                error,
            )
            with contextlib.suppress(OSError):  # a full disk may have left part of it
                tmp.unlink(missing_ok=True)
            return
        _prune(self.path.parent)


def _well_formed(entry) -> bool:
    """An entry as :meth:`StatCache.record` writes it: 5 ints, a sha256, 2 sizes, a 64-bit hash or null."""
    if not isinstance(entry, list) or len(entry) != 9:
        return False
    ints = entry[:5] + entry[6:8]
    if not all(type(v) is int and v >= 0 for v in ints) or entry[6] < 1 or entry[7] < 1:
        return False
    phash = entry[8]
    return (
        isinstance(entry[5], str)
        and _SHA256.fullmatch(entry[5]) is not None
        and (phash is None or (type(phash) is int and 0 <= phash < 2**64))
    )


def _prune(folder: Path) -> None:
    """Remove the least recently written records beyond :data:`MAX_SOURCES`."""
    try:
        records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for stale in records[MAX_SOURCES:]:
            stale.unlink(missing_ok=True)
    except OSError as error:  # another prepare pruning at the same time; the next run prunes again
        log.debug("pruning %s: %s", folder, error)
