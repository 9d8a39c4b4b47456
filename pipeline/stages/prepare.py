"""Stage prepare: scan the dataset, check every image, split, write the manifest.

Reads  ``params.yaml`` section ``data`` and every image under ``data.source``.
Writes ``--manifest`` (CSV: id, path, label, class_name, split, sha256, width,
       height), the only thing later stages read about the dataset;
       ``--hashes`` (``data/content_hashes.txt``: the distinct sha256 of the
       images, sorted; what the extract stages depend on);
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

The stage runs on every ``dvc repro`` (``always_changed`` in dvc.yaml), since
DVC cannot see an image of a CSV source change (it tracks the CSV); its outputs
change only when the dataset does, so later stages rerun only then. A file
whose size, mtime, ctime and inode are those of the last run is not read again
(:mod:`pipeline.dataset.stat_cache`; the record is kept in the shoulders cache
folder, not in the project).

The work is :func:`pipeline.dataset.curation.build_manifest`.

Usage: ``python -m pipeline.stages.prepare --manifest data/manifest.csv --report reports/prepare.json``
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.dataset.curation import build_manifest
from pipeline.dataset.report import dataset_metrics, summary_markdown
from pipeline.dataset.stat_cache import StatCache, record_file
from pipeline.manifest import write_content_hashes, write_manifest, write_text_atomically

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument(
        "--hashes",
        type=Path,
        default=None,
        help="the distinct content hashes, one a line (default: content_hashes.txt beside --manifest)",
    )
    parser.add_argument("--report", required=True, type=Path)
    parser.add_argument("--summary", type=Path, default=None)
    parser.add_argument("--metrics", type=Path, default=None)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    known = StatCache.load(record_file(params.data.source))
    try:
        records, report = build_manifest(params.data, progress=not args.no_progress, known=known)
    finally:
        if known.recorded:  # also when bad images stop the stage: the good ones need no reading next time
            known.save()
    write_manifest(records, args.manifest)
    write_content_hashes(records, args.hashes or args.manifest.with_name("content_hashes.txt"))
    write_text_atomically(args.report, json.dumps(report.to_dict(), indent=2) + "\n")
    if args.summary:
        write_text_atomically(args.summary, summary_markdown(report))
    if args.metrics:
        write_text_atomically(args.metrics, json.dumps({"data": dataset_metrics(report)}, indent=2) + "\n")
    log.info(
        "manifest: %d images, %s; duplicates: %s; %d warning(s)",
        report.images,
        report.per_split,
        report.duplicates,
        len(report.warnings),
    )


if __name__ == "__main__":
    run_stage(main)
