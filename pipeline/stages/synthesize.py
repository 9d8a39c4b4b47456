"""Stage synthesize: generate the built-in dataset (the default ``data.source``).

Reads  ``params.yaml`` section ``synthetic`` and ``data.source``.
Writes an ImageFolder tree ``--out`` (``data/synthetic/<class>/<image>.png``),
       deterministic by seed (see :mod:`pipeline.synthetic`) — only when
       ``data.source`` is that folder: pointed elsewhere, nobody reads it, and
       ``--out`` is left an empty folder (a dataset written earlier is removed).

Usage: ``python -m pipeline.stages.synthesize --out data/synthetic``
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.synthetic import generate_dataset, remove_dataset

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write, e.g. data/synthetic")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if not _same_folder(Path(params.data.source), args.out):
        remove_dataset(args.out)
        log.info("data.source is %s, not %s: no synthetic images written", params.data.source, args.out)
        return
    spec = params.synthetic
    generate_dataset(
        args.out,
        classes=spec.classes,
        per_class=spec.per_class,
        image_size=spec.image_size,
        seed=spec.seed,
        progress=not args.no_progress,
    )


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


if __name__ == "__main__":
    run_stage(main)
