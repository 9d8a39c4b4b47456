"""The manifest: one row per image — the only thing later stages read about the dataset.

Written by the prepare stage (:mod:`pipeline.dataset.curation` builds it) as
``data/manifest.csv`` with the columns :data:`MANIFEST_FIELDS`: the image's id
(its path under the source), the path to open, its label and class name, its
split, the sha256 of its bytes, and its size.

Beside it prepare writes ``data/content_hashes.txt`` (:func:`write_content_hashes`):
the distinct sha256 of every image, sorted, one a line — all that determines
which features exist. It is the extract stages' input in DVC, so re-splitting,
relabelling or moving files never starts an extraction; extraction finds each
image's bytes through the manifest (:func:`images_by_hash`) and checks them
against the hash as it reads them.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST_FIELDS = ("id", "path", "label", "class_name", "split", "sha256", "width", "height")


@dataclass(frozen=True)
class Record:
    """One image of the manifest."""

    id: str  # path relative to the source root, POSIX separators
    path: str  # path to open, relative to the project root (or absolute)
    label: int
    class_name: str
    split: str
    sha256: str
    width: int
    height: int


def write_text_atomically(path: Path, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` beside ``path`` and rename it over it, so a failed write (a full disk) leaves the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(records: Iterable[Record], path: Path) -> None:
    """Write the manifest CSV (one row per image, columns :data:`MANIFEST_FIELDS`), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(asdict(record))
    write_text_atomically(path, buffer.getvalue())


def read_manifest(path: Path | str) -> list[Record]:
    """Read a manifest written by :func:`write_manifest`.

    Raises
    ------
    FileNotFoundError
        If there is no manifest (run the prepare stage first).
    ValueError
        If its columns are not :data:`MANIFEST_FIELDS`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}; run `dvc repro prepare` first")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
            raise ValueError(f"{path} has columns {reader.fieldnames}; expected {list(MANIFEST_FIELDS)}")
        return [
            Record(
                id=row["id"],
                path=row["path"],
                label=int(row["label"]),
                class_name=row["class_name"],
                split=row["split"],
                sha256=row["sha256"],
                width=int(row["width"]),
                height=int(row["height"]),
            )
            for row in reader
        ]


def class_names(records: Sequence[Record]) -> list[str]:
    """Class names indexed by label."""
    names = {r.label: r.class_name for r in records}
    return [names[i] for i in range(len(names))]


def write_content_hashes(records: Iterable[Record], path: Path) -> None:
    """Write the distinct sha256 of ``records``, sorted, one a line (atomically, like the manifest)."""
    write_hash_list(sorted({r.sha256 for r in records}), path)


def write_hash_list(hashes: Sequence[str], path: Path) -> None:
    """Write content hashes one a line, atomically."""
    write_text_atomically(path, "".join(f"{h}\n" for h in hashes), encoding="ascii")


def read_content_hashes(path: Path | str) -> list[str]:
    """The hashes of :func:`write_content_hashes`.

    Raises
    ------
    FileNotFoundError
        If there is no such file (run the prepare stage first).
    ValueError
        If a line is not a sha256.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no content hashes at {path}; run `dvc repro prepare` first")
    hashes = path.read_text(encoding="ascii").split()
    bad = [h for h in hashes if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
    if bad:
        raise ValueError(f"{path} has lines that are not sha256 digests, e.g. {bad[0]!r}")
    return hashes


def images_by_hash(records: Sequence[Record]) -> dict[str, Record]:
    """One record per distinct image (the first with those bytes), by sha256."""
    out: dict[str, Record] = {}
    for record in records:
        out.setdefault(record.sha256, record)
    return out
