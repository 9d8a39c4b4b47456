"""Stage params_check: every value of params.yaml, and the names under ``data.source``, checked before any other stage.

Reads  ``params.yaml``, every section (:func:`pipeline.config.load_params`:
       unknown keys, types, ranges, feature sets against the backbone
       registry); ``data.source``: it must exist, unless it is ``--synthetic``
       (the folder the synthesize stage writes), and when it is a folder
       every name under it must be UTF-8 and every symbolic link in it must
       lead somewhere (:func:`names_dvc_cannot_hash`). No image is opened.
Writes ``--out`` (``reports/params_check.json``): the same bytes whatever the
       values, so that a valid change (a head's ``C``) reruns this stage and
       then only the stages that read the changed key.

Why a stage of its own: ``dvc repro`` deletes a stage's outputs before it runs
the stage's command, so a stage refusing a bad value itself would already have
lost them (``data/manifest.csv``). Every first stage of ``dvc.yaml`` depends on
``--out``, so DVC runs this stage before any other and stops there, with one
line naming the key, the value and what is allowed, before it deletes anything.
A missing ``data.source`` is such a value too: DVC would delete prepare's
outputs before finding that its dependency is not there.

Why the names: DVC hashes ``data.source`` (prepare's dependency) to know whether
the dataset changed, and its hashing fails on a name that is not UTF-8 ("'utf-8'
codec can't encode characters ... surrogates not allowed", no file named) and on
a dangling link. This stage names such paths — when it runs, that is when
params.yaml, ``pipeline/config/`` or this module changed: a file added alone does not
rerun it, since DVC can only tell by hashing the folder, which is what fails
(``shoulders check-params`` runs these checks at any time).

Usage: ``python -m pipeline.stages.params_check --synthetic data/synthetic --out reports/params_check.json``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import Params, ParamsError, load_params

log = logging.getLogger(__name__)

# What --out holds. Constant on purpose: a value in it (a version, a digest of params) would change the file,
# and rerun every stage that depends on it (prepare, check, backbone_cost, ...) on changes they do not read.
VALID = {"params": "valid"}
# Paths named in one error line at most; the count says how many more there are.
SHOWN_AT_MOST = 5


def check_params(params_file: Path, synthetic: Path) -> Params:
    """Every check of this stage: the params file's values, then ``data.source``.

    Parameters
    ----------
    params_file : Path
        ``params.yaml``.
    synthetic : Path
        The folder the synthesize stage writes: as ``data.source`` it need not exist yet.

    Returns
    -------
    Params
        The validated parameters.

    Raises
    ------
    ParamsError
        A bad key or value (named, with what is allowed), or a ``data.source`` that does not exist.
    ValueError
        Naming every path under ``data.source`` that DVC cannot hash.
    """
    params = load_params(params_file)
    source = Path(params.data.source)
    if source.resolve() == synthetic.resolve():
        return params  # written by the synthesize stage, with names of our own
    if not source.exists():
        raise ParamsError(
            f"data.source must name a folder of images or a CSV file (relative to the folder of "
            f"dvc.yaml). Received: {params.data.source!r}, which does not exist"
        )
    if source.is_dir():
        problems = names_dvc_cannot_hash(source)
        if problems:
            more = f" and {len(problems) - SHOWN_AT_MOST} more" if len(problems) > SHOWN_AT_MOST else ""
            raise ValueError(
                f"data.source {_shown(source)}: {len(problems)} path(s) DVC cannot hash: "
                + "; ".join(problems[:SHOWN_AT_MOST])
                + more
                + " (rename or remove them, then `dvc repro`)"
            )
    return params


def names_dvc_cannot_hash(root: Path) -> list[str]:
    """Paths under ``root`` that stop DVC from hashing it, each with why and what to do, sorted.

    A name that is not valid UTF-8 (DVC stores paths as UTF-8; the bytes are shown
    escaped, ``b'cats/\\xff\\xfe.jpg'``) — a folder so named is not looked into: renaming
    it is the fix — and a symbolic link that leads nowhere (dangling, or a loop).
    A link to a folder is not looked into (prepare does not descend into one either).
    Only names are read: a directory walk, no file opened (10 ms for 1200 images).

    Parameters
    ----------
    root : Path
        A dataset folder.

    Returns
    -------
    list of str
        One entry per path, relative to ``root``; empty when DVC can hash the folder.
    """
    problems = []
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(root)
                if _shown(rel) != str(rel):  # undecodable bytes, kept by Python as surrogates
                    problems.append(f"{_shown(rel)}: the name is not valid UTF-8; rename it")
                elif entry.is_symlink():
                    if not os.path.exists(entry.path):  # follows the link: False for dangling links and loops
                        problems.append(
                            f"{rel}: a symbolic link to {_shown(Path(os.readlink(entry.path)))}, "
                            "which does not exist (or a link loop); remove it or restore its target"
                        )
                elif entry.is_dir():
                    pending.append(Path(entry.path))
    return sorted(problems)


def _shown(path: Path) -> str:
    """A path as text: as it is when it is valid UTF-8, else its bytes escaped (``b'caf\\xe9.jpg'``).

    As :func:`pipeline.dataset.sources.shown`, which prepare's messages use; not imported from there,
    so that this stage, which runs before every ``dvc repro``, needs none of prepare's code.
    """
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(text))
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the file written when everything is valid")
    parser.add_argument(
        "--synthetic",
        required=True,
        type=Path,
        help="the synthesize stage's folder (data/synthetic): as data.source, it need not exist",
    )
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    params = check_params(args.params, args.synthetic)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(VALID) + "\n", encoding="utf-8")
    log.info(
        "%s: every value valid (%d feature set(s)); data.source %s",
        args.params,
        len(params.features),
        params.data.source,
    )


if __name__ == "__main__":
    run_stage(main)
