"""Stage prepare: scan the dataset, check every image, split, write the manifest.

Reads  ``params.yaml`` section ``data`` and every image under ``data.source``.
Writes ``--manifest`` (CSV: id, path, label, class_name, split, sha256, width,
       height), the only thing later stages read about the dataset;
       ``--report`` (JSON: counts per split and class, class imbalance, empty
       class folders, duplicates removed, near duplicates suspected, files
       skipped or ignored, image size distribution, warnings), ``--summary``
       (the same for humans, Markdown) and ``--metrics`` (the headline counts,
       for ``dvc metrics``).

Undecodable images stop the stage with an error naming every bad file, unless
``data.bad_images: skip``. Exact duplicates are removed (``data.duplicates``);
near duplicates across splits are searched for and reported when
``data.near_duplicates`` is set. Every file is written whole or not at all, so a
full disk leaves the previous outputs in place.

The work is :func:`pipeline.dataset.curation.build_manifest`.

Usage: ``python -m pipeline.stages.prepare --manifest data/manifest.csv --report reports/prepare.json``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Sequence

from pipeline.config import load_params
from pipeline.dataset.curation import build_manifest
from pipeline.dataset.report import dataset_metrics, summary_markdown
from pipeline.manifest import write_manifest
from pipeline.stage import run_stage

log = logging.getLogger(__name__)


def _write_text(path: Path, text: str) -> None:
    # Beside the target, then renamed over it: a failed write never leaves half a report.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--report", required=True, type=Path)
    parser.add_argument("--summary", type=Path, default=None)
    parser.add_argument("--metrics", type=Path, default=None)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    records, report = build_manifest(params.data, progress=not args.no_progress)
    write_manifest(records, args.manifest)
    _write_text(args.report, json.dumps(report.to_dict(), indent=2) + "\n")
    if args.summary:
        _write_text(args.summary, summary_markdown(report))
    if args.metrics:
        _write_text(args.metrics, json.dumps({"data": dataset_metrics(report)}, indent=2) + "\n")
    log.info("manifest: %d images, %s; duplicates: %s; %d warning(s)",
             report.images, report.per_split, report.duplicates, len(report.warnings))


if __name__ == "__main__":
    run_stage(main)
