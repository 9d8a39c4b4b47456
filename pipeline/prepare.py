"""Stage prepare: scan the dataset, check every image, split, write the manifest.

Reads  ``params.yaml`` section ``data`` and every image under ``data.source``.
Writes ``--manifest`` (CSV: id, path, label, class_name, split, sha256, width,
       height), the only thing later stages read about the dataset;
       ``--report`` (JSON: counts per split and class, duplicates removed, files
       skipped or ignored, image sizes), ``--summary`` (the same for humans,
       Markdown) and ``--metrics`` (the headline counts, for ``dvc metrics``).

Undecodable images stop the stage with an error naming every bad file, unless
``data.bad_images: skip``. Exact duplicates are removed (``data.duplicates``).

Usage: ``python -m pipeline.prepare --manifest data/manifest.csv --report reports/prepare.json``
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from pipeline.stage import run_stage
from pipeline.config import SPLITS, load_params
from pipeline.data import PrepareReport, build_manifest, write_manifest

log = logging.getLogger(__name__)


def summary_markdown(report: PrepareReport) -> str:
    """The prepare report as a short Markdown page."""
    lines = [f"# Dataset: {report.source}", "",
             f"{report.images} images, {len(report.classes)} classes, layout `{report.layout}`; "
             f"class imbalance (largest / smallest train class): {report.class_imbalance}", "",
             "| class | " + " | ".join(SPLITS) + " |", "|---|" + "---:|" * len(SPLITS)]
    for name, counts in report.per_class_split.items():
        lines.append(f"| {name} | " + " | ".join(str(counts[s]) for s in SPLITS) + " |")
    lines.append("| **all** | " + " | ".join(str(report.per_split[s]) for s in SPLITS) + " |")
    dup = report.duplicates
    lines += ["", "## Duplicates (byte-identical files)", ""]
    if dup:
        lines.append(f"{dup.get('groups', 0)} groups; removed {dup.get('removed_cross_split', 0)} that "
                     f"leaked across splits and {dup.get('removed_within_split', 0)} repeats within a split.")
        straddling = {k: v for k, v in dup.items() if k.count("_") == 1 and k.split("_")[0] in SPLITS}
        if straddling:
            lines.append("Groups straddling splits: " + ", ".join(f"{k.replace('_', '/')}: {v}"
                                                                  for k, v in straddling.items()) + ".")
    else:
        lines.append("Not checked (data.duplicates: keep).")
    sizes = report.image_size
    lines += ["", "## Image sizes", "", "| | min | median | max |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['min']} | {v['median']} | {v['max']} |" for k, v in sizes.items()]
    if report.bad_images_skipped:
        lines += ["", f"## Skipped: {len(report.bad_images_skipped)} undecodable", ""]
        lines += [f"- {m}" for m in report.bad_images_skipped]
    if report.other_files_ignored:
        lines += ["", f"## Ignored: {len(report.other_files_ignored)} files that are not images", ""]
        lines += [f"- {m}" for m in report.other_files_ignored[:50]]
    return "\n".join(lines) + "\n"


def headline(report: PrepareReport) -> dict:
    """The dataset counts worth seeing next to accuracy in ``dvc metrics show``."""
    duplicates = report.duplicates
    return {"images": report.images, **report.per_split, "classes": len(report.classes),
            "duplicates_removed_cross_split": duplicates.get("removed_cross_split", 0),
            "duplicates_removed_within_split": duplicates.get("removed_within_split", 0),
            "bad_images_skipped": len(report.bad_images_skipped)}


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
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if args.summary:
        args.summary.write_text(summary_markdown(report), encoding="utf-8")
    if args.metrics:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps({"data": headline(report)}, indent=2) + "\n", encoding="utf-8")
    log.info("manifest: %d images, %s; duplicates: %s", report.images, report.per_split, report.duplicates)


if __name__ == "__main__":
    run_stage(main)
