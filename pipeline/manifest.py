"""The manifest: one row per image — the only thing later stages read about the dataset.

Written by the prepare stage (:mod:`pipeline.dataset.curation` builds it) as
``data/manifest.csv`` with the columns :data:`MANIFEST_FIELDS`: the image's id
(its path under the source), the path to open, its label and class name, its
split, the sha256 of its bytes, and its size.
"""

from __future__ import annotations

import csv
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

MANIFEST_FIELDS = ("id", "path", "label", "class_name", "split", "sha256", "width", "height")


@dataclass(frozen=True)
class Record:
    """One image of the manifest."""

    id: str            # path relative to the source root, POSIX separators
    path: str          # path to open, relative to the project root (or absolute)
    label: int
    class_name: str
    split: str
    sha256: str
    width: int
    height: int


def write_manifest(records: Iterable[Record], path: Path) -> None:
    """Write the manifest CSV (one row per image, columns :data:`MANIFEST_FIELDS`).

    The file is written beside ``path`` and renamed over it, so a failed write
    (a full disk) leaves the previous manifest whole instead of truncated.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
            writer.writeheader()
            for record in records:
                writer.writerow(asdict(record))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        return [Record(id=row["id"], path=row["path"], label=int(row["label"]), class_name=row["class_name"],
                       split=row["split"], sha256=row["sha256"], width=int(row["width"]),
                       height=int(row["height"])) for row in reader]


def class_names(records: Sequence[Record]) -> list[str]:
    """Class names indexed by label."""
    names = {r.label: r.class_name for r in records}
    return [names[i] for i in range(len(names))]
