"""Stage diagnose: the data seen through the cached features — learning curves, errors, label issues, maps.

Reads  ``--chosen`` (``reports/chosen_heads.json``, written by evaluate: the
       variant each feature set chose and the overall choice, with their rows,
       nothing that moves with other variants' scores), those heads' files (their
       sha256 checked), every feature store they were trained on, the manifest (``--manifest``) and
       ``params.yaml`` sections ``diagnose``, ``heads.cv`` and ``data.max_image_pixels``.
Writes ``--out`` (``reports/diagnose``: predictions, learning curve, label-issue
       ranking and map data for ``dvc plots``, contact sheets and thumbnails),
       ``--errors`` (``reports/errors.md``), ``--label-issues``
       (``reports/label_issues.md``) and ``--learning-curve``
       (``reports/learning_curve.md``); :mod:`pipeline.diagnosis.diagnose` lists every file.

No backbone runs and nothing is chosen here; test images are only predicted by
the head evaluate already scored, and the learning curve is scored on
validation (or folds of train+val with ``heads.cv``).

Usage: ``python -m pipeline.stages.diagnose --chosen reports/chosen_heads.json
--manifest data/manifest.csv --out reports/diagnose --errors reports/errors.md
--label-issues reports/label_issues.md --learning-curve reports/learning_curve.md``
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.diagnosis.chosen import read_chosen_heads
from pipeline.diagnosis.diagnose import diagnose
from pipeline.manifest import read_manifest

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chosen", required=True, type=Path, help="evaluate's chosen heads (reports/chosen_heads.json)"
    )
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder for the data, sheets and thumbnails")
    parser.add_argument("--errors", required=True, type=Path, help="Markdown page of the errors")
    parser.add_argument("--label-issues", required=True, type=Path, help="Markdown page of likely label mistakes")
    parser.add_argument("--learning-curve", required=True, type=Path, help="Markdown page of the learning curves")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    chosen = read_chosen_heads(args.chosen)
    if args.out.exists():
        shutil.rmtree(args.out)  # thumbnails of images no longer listed would linger
    args.out.mkdir(parents=True)
    summary = diagnose(
        chosen,
        read_manifest(args.manifest),
        params.diagnose,
        cv=params.heads.cv,
        max_pixels=params.data.max_image_pixels,
        out=args.out,
        pages={"errors": args.errors, "label_issues": args.label_issues, "learning_curve": args.learning_curve},
    )
    log.info(
        "%s: %d of %d val/test images misclassified, %d of %d train/val labels flagged; %s",
        summary["model"],
        summary["misclassified"],
        summary["val_test_images"],
        summary["label_issues_flagged"],
        summary["label_issues_ranked"],
        ", ".join(f"{k} {v:.1f} s" for k, v in summary["seconds"].items()),
    )


if __name__ == "__main__":
    run_stage(main)
