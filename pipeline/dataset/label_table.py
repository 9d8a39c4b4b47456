"""A dataset given as a CSV file: one row per image, ``path,label[,split]``.

``data.source`` names the CSV. Its header names the columns ``path`` and ``label`` (and optionally
``split``; any order, other columns ignored). ``path`` is relative to the CSV's folder (``/`` as the
separator) and must lead to an image file inside that folder (the names-and-links policy of
:mod:`pipeline.dataset.sources`); ``label`` is the class name. ``split`` is ``train``, ``val`` (or
``validation``, ``valid``) or ``test``, in any case, on every row or on none: without it the images are
split by ``data.split``; with it the given split is kept and a missing val or test is drawn from
train (the policy in :mod:`pipeline.dataset.layouts`).

A path is normalised before anything else (``./a.png``, ``a//b.png``, ``a/../a/b.png`` are ``a.png``,
``a/b.png``, ``a/b.png``), and is the image's id. One file listed twice — by the same path, by two
spellings of it, or by two names of one file (a link and its target, a hard link, two cases of a
name where the file system folds case: rows are compared by the file they open) — is an error naming
both lines, and says so when the two rows give it two labels. A label is a plain class name: not
``.`` or ``..``, not starting with ``.``, without ``/``, a backslash or control characters.

DVC tracks the CSV itself (``${data.source}`` in dvc.yaml), not the images it lists, so the prepare
stage runs on every ``dvc repro`` and re-reads every listed file whose stat changed
(:mod:`pipeline.dataset.stat_cache`): an image edited in place reaches the manifest, and extraction.
"""

from __future__ import annotations

import csv
import os
import posixpath
from pathlib import Path, PurePosixPath

from pipeline.dataset.layouts import ACCEPTED, SPLIT_NAMES
from pipeline.dataset.sources import Candidate, SourceScan, shown, unusable
from pipeline.images import is_image_name

REQUIRED = ("path", "label")
# How many bad rows one error lists (all are counted).
_LISTED = 20


def scan_table(table: Path, *, path_prefix: str | None = None) -> SourceScan:
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
        is not train/val/test, a split on some rows only, a label that is not a plain name, a file
        listed twice (naming both lines), a path that is not an image file inside the CSV's folder.
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
            raise ValueError(
                f"{table}: the header {header} lacks the column(s) {missing}; a CSV source needs "
                "a header row path,label[,split] (path relative to the CSV's folder)"
            )
        rows = list(reader)
    has_split = "split" in header
    problems: list[str] = []
    candidates: list[Candidate] = []
    by_path: dict[str, tuple[int, str, str]] = {}  # normalised path → (line, path as written, label)
    by_file: dict[tuple[int, int], tuple[int, str, str]] = {}  # (device, inode) → the same
    inside = folder.resolve()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        written = (row.get("path") or "").strip()
        label = (row.get("label") or "").strip()
        split_cell = (row.get("split") or "").strip() if has_split else ""
        where = f"line {line} ({written or 'no path'})"
        if not written or not label or (has_split and not split_cell):
            empty = [
                name
                for name, value in (("path", written), ("label", label), ("split", split_cell))
                if not value and (name != "split" or has_split)
            ]
            problems.append(f"{where}: empty {', '.join(empty)}")
            continue
        if has_split and split_cell.lower() not in SPLIT_NAMES:
            problems.append(f"{where}: split {split_cell!r} is not one of train, val (validation, valid), test")
            continue
        why = label_problem(label)
        if why:
            problems.append(f"{where}: label {label!r} is not a plain class name ({why}); {PLAIN}")
            continue
        rel = posixpath.normpath(written)  # './a', 'a//b', 'a/../a/b': one path, one spelling
        if rel in by_path:
            problems.append(f"{where}: {_listed_twice(by_path[rel], 'path', written, label)}")
            continue
        by_path[rel] = (line, written, label)
        path = folder / rel
        if PurePosixPath(rel).is_absolute() or not path.is_file() and not path.is_symlink():
            problems.append(
                f"{where}: no such file under {folder}"
                + (" (paths are relative to the CSV's folder)" if PurePosixPath(rel).is_absolute() else "")
            )
            continue
        if unusable(path, folder, inside, problems):
            continue
        if not is_image_name(path):
            problems.append(f"{where}: not an image file (extensions: .jpg .jpeg .png .bmp .gif .webp)")
            continue
        stat = os.stat(path)
        if (stat.st_dev, stat.st_ino) in by_file:
            problems.append(
                f"{where}: {_listed_twice(by_file[stat.st_dev, stat.st_ino], 'file', written, label)} "
                "(another name of it: a link, a hard link, or another case where the file system "
                "ignores case)"
            )
            continue
        by_file[stat.st_dev, stat.st_ino] = (line, written, label)
        candidates.append(
            Candidate(
                id=rel,
                path=f"{prefix}/{rel}" if prefix not in ("", ".") else rel,
                class_name=label,
                split=SPLIT_NAMES[split_cell.lower()] if has_split else None,
            )
        )
    if problems:
        raise ValueError(
            f"{len(problems)} row(s) of {shown(table)} cannot be used:\n  "
            + "\n  ".join(problems[:_LISTED])
            + (f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else "")
        )
    if not candidates:
        raise ValueError(f"{table} lists no images ({ACCEPTED})")
    splits = {c.split for c in candidates}
    if has_split and "train" not in splits:
        raise ValueError(
            f"{table}: the split column gives {sorted(splits)} but no train rows; mark the training "
            "images train, or drop the column to have the images split by data.split"
        )
    if has_split and len(splits) == 1:
        raise ValueError(
            f"{table}: every row is split train; mark held-out rows val or test, or drop the "
            "split column to have the images split by data.split"
        )
    return SourceScan(
        layout="table",
        candidates=sorted(candidates, key=lambda c: c.id),
        ignored=[],
        class_folders=sorted({c.class_name for c in candidates}),
    )


PLAIN = "a label may not be '.' or '..', start with '.', or hold '/', '\\' or control characters"


def label_problem(label: str) -> str:
    """Why ``label`` is not a plain class name, or ``''`` when it is one (see :data:`PLAIN`).

    A class name is what a folder source would call the class's folder, and ``shoulders predict``
    matches class folders by it: it must be a name one folder could have (a leading dot hides a
    folder, and a folder source skips it). A label that reads as a path is more often a column mix-up
    than a class.
    """
    if label.startswith("."):
        return "it starts with '.'"
    if "/" in label or "\\" in label:
        return "it holds a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        return "it holds a control character"
    return ""


def _listed_twice(first: tuple[int, str, str], what: str, written: str, label: str) -> str:
    """The problem of a row that lists the same path or file as the row ``first`` (line, path, label)."""
    line, first_written, first_label = first
    as_written = "" if first_written == written else f" ({first_written})"
    if first_label != label:
        return (
            f"the same {what} as line {line}{as_written}, with another label: {first_label!r} on line {line}, "
            f"{label!r} here; keep the row with the right label"
        )
    return f"the same {what} as line {line}{as_written}"
