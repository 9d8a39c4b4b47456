"""A dataset given as a CSV file: one row per image, ``path,label[,split]``.

``data.source`` names the CSV. Its header names the columns ``path`` and ``label`` (and optionally
``split``; any order, other columns ignored). ``path`` is relative to the CSV's folder (``/`` as the
separator) and must lead to an image file inside that folder (the names-and-links policy of
:mod:`pipeline.dataset.sources`); ``label`` is the class name. ``split`` is ``train``, ``val`` (or
``validation``, ``valid``) or ``test``, in any case, on every row or on none: without it the images are
split by ``data.split``; with it the given split is kept and a missing val or test is drawn from
train (the policy in :mod:`pipeline.dataset.layouts`).

DVC tracks the CSV itself (``${data.source}`` in dvc.yaml), not the images it lists: an image
edited in place is caught by the extract stage, which checks every file against the content hash
prepare recorded; rerun ``dvc repro -f prepare`` then.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import Optional

from pipeline.dataset.layouts import ACCEPTED, SPLIT_NAMES
from pipeline.dataset.sources import Candidate, SourceScan, shown, unusable
from pipeline.images import is_image_name

REQUIRED = ("path", "label")
# How many bad rows one error lists (all are counted).
_LISTED = 20


def scan_table(table: Path, *, path_prefix: Optional[str] = None) -> SourceScan:
    """The images a CSV file lists, with their class and (when given) split.

    Parameters
    ----------
    table : Path
        The CSV file.
    path_prefix : str, optional
        How ``table`` is written in paths stored in the manifest (defaults to ``str(table)``); the
        manifest's paths are its folder joined with each row's ``path``.

    Returns
    -------
    SourceScan
        ``layout`` 'table'; each candidate's id is its row's ``path``.

    Raises
    ------
    FileNotFoundError
        If ``table`` is not a file.
    ValueError
        If the header lacks ``path`` or ``label``, or naming every bad row: an empty cell, a split that
        is not train/val/test, a split on some rows only, a path listed twice, a path that is not an
        image file inside the CSV's folder.
    """
    table = Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"data.source {str(table)!r} is not a file ({ACCEPTED})")
    folder = table.parent
    prefix = str(PurePosixPath(path_prefix if path_prefix is not None else str(table)).parent)
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [name for name in REQUIRED if name not in header]
        if missing:
            raise ValueError(f"{table}: the header {header} lacks the column(s) {missing}; a CSV source needs "
                             "a header row path,label[,split] (path relative to the CSV's folder)")
        rows = list(reader)
    has_split = "split" in header
    problems: list[str] = []
    candidates: list[Candidate] = []
    seen: dict[str, int] = {}
    inside = folder.resolve()
    for line, row in enumerate(rows, start=2):   # line 1 is the header
        rel = (row.get("path") or "").strip()
        label = (row.get("label") or "").strip()
        split_cell = (row.get("split") or "").strip() if has_split else ""
        where = f"line {line} ({rel or 'no path'})"
        if not rel or not label or (has_split and not split_cell):
            empty = [name for name, value in (("path", rel), ("label", label), ("split", split_cell))
                     if not value and (name != "split" or has_split)]
            problems.append(f"{where}: empty {', '.join(empty)}")
            continue
        if has_split and split_cell.lower() not in SPLIT_NAMES:
            problems.append(f"{where}: split {split_cell!r} is not one of train, val (validation, valid), test")
            continue
        if rel in seen:
            problems.append(f"{where}: the same path as line {seen[rel]}")
            continue
        seen[rel] = line
        path = folder / rel
        if PurePosixPath(rel).is_absolute() or not path.is_file() and not path.is_symlink():
            problems.append(f"{where}: no such file under {folder}"
                            + (" (paths are relative to the CSV's folder)" if PurePosixPath(rel).is_absolute()
                               else ""))
            continue
        if unusable(path, folder, inside, problems):
            continue
        if not is_image_name(path):
            problems.append(f"{where}: not an image file (extensions: .jpg .jpeg .png .bmp .gif .webp)")
            continue
        candidates.append(Candidate(id=rel, path=f"{prefix}/{rel}" if prefix not in ("", ".") else rel,
                                    class_name=label, split=SPLIT_NAMES[split_cell.lower()] if has_split else None))
    if problems:
        raise ValueError(f"{len(problems)} row(s) of {shown(table)} cannot be used:\n  "
                         + "\n  ".join(problems[:_LISTED])
                         + (f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""))
    if not candidates:
        raise ValueError(f"{table} lists no images ({ACCEPTED})")
    splits = {c.split for c in candidates}
    if has_split and "train" not in splits:
        raise ValueError(f"{table}: the split column gives {sorted(splits)} but no train rows; mark the training "
                         "images train, or drop the column to have the images split by data.split")
    if has_split and len(splits) == 1:
        raise ValueError(f"{table}: every row is split train; mark held-out rows val or test, or drop the "
                         "split column to have the images split by data.split")
    return SourceScan(layout="table", candidates=sorted(candidates, key=lambda c: c.id), ignored=[],
                      class_folders=sorted({c.class_name for c in candidates}))
