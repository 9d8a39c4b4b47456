"""Fitted heads on disk: written with their sha256, loaded only when the file is still what was written.

A ``heads/<key>/<variant>.joblib`` file is a pickle, and unpickling runs
whatever code the file names. The heads stage writes each one with
:func:`save_head`, which returns the file's sha256 for its row of
``scores.json``; evaluate, finetune and export load heads with
:func:`load_head` only, which reads the file once, checks those bytes against
the recorded sha256 and unpickles the same bytes, so a file replaced or
changed after the heads stage wrote it is refused before any of it runs.
(A deployable model never holds a pickle: see :mod:`pipeline.export.predict_command`.)
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib

HEAD_SUFFIX = ".joblib"


def head_file(folder: Path, variant: str) -> Path:
    """Where the heads stage keeps the fitted head of ``variant`` in ``folder`` (``heads/<key>``)."""
    return Path(folder) / f"{variant}{HEAD_SUFFIX}"


#: The keys of a ``scores.json`` row that describe the fitted head itself: what it is, its file's sha256 and its
#: own validation scores. Timings, memory and ``reused`` change from run to run and are left out, so that a file
#: holding only these (evaluate's export and diagnose targets) is unchanged while the head is.
HEAD_ROW_KEYS = (
    "variant",
    "kind",
    "pooling",
    "standardize",
    "pca",
    "augment",
    "tta",
    "params",
    "out_of_core",
    "selection",
    "val_accuracy",
    "val_macro_f1",
    "sha256",
)


def head_row(row: Mapping[str, Any]) -> dict:
    """The keys of ``row`` that describe the fitted head (:data:`HEAD_ROW_KEYS`), those it has."""
    return {key: row[key] for key in HEAD_ROW_KEYS if key in row}


def save_head(estimator: Any, path: Path) -> str:
    """Write a fitted head; returns the sha256 of the file written (recorded in ``scores.json``)."""
    joblib.dump(estimator, path)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_head(folder: Path, row: Mapping[str, Any]) -> Any:
    """The fitted head of a ``scores.json`` row, if its file has the sha256 the row records.

    Parameters
    ----------
    folder : Path
        ``heads/<key>``: the folder of the row's ``scores.json``.
    row : mapping
        The variant's row (``variant`` and ``sha256``).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If the row records no sha256 (written by an older version) or the file's bytes differ from it;
        nothing of the file is unpickled then.
    """
    path = head_file(folder, row["variant"])
    expected = row.get("sha256")
    if expected is None:
        raise ValueError(
            f"{Path(folder) / 'scores.json'} records no sha256 for {row['variant']} (written by an "
            "older version): its .joblib file is not loaded unchecked; `dvc repro` refits the heads"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: `dvc repro` (or `dvc checkout heads`) restores the heads")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(
            f"{path} is not the file the heads stage wrote (sha256 {actual[:12]}…, "
            f"{Path(folder) / 'scores.json'} records {expected[:12]}…); it is a pickle, so it is not "
            "loaded: `dvc checkout heads` restores it, or `dvc repro --force heads` refits it"
        )
    return joblib.load(io.BytesIO(data))
