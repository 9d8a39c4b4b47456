"""The backbone comparison of a finished run: best test accuracy per feature set (with its interval) and img/s.

Reads what the pipeline wrote — ``reports/evaluation.json`` (the evaluate stage: the head
chosen on validation in each feature set, scored once on test, with a
bootstrap 95% interval) and ``reports/extract/<key>.json`` (the extract stage:
images computed and the images per second of that pass) — and prints one
markdown table, the backbones side by side. Run it after ``dvc repro`` or
``dvc exp run``, from the project root (or ``--root``)::

    dvc exp run -S data.source=../shared/datasets/signs && python benchmarks/backbones.py

The extraction speed is that of the run that computed the store's rows
(``computed`` images; 0 when every row was already there: then no speed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(root: Path) -> list[dict]:
    """One row per feature set of ``root/reports/evaluation.json``, with its extraction report."""
    evaluation = json.loads((root / "reports" / "evaluation.json").read_text(encoding="utf-8"))
    out = []
    for key, entry in evaluation["feature_sets"].items():
        report_file = root / "reports" / "extract" / f"{key}.json"
        report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
        out.append(
            {
                "feature set": key,
                "val": entry["val_accuracy"],
                "test": entry["test_accuracy"],
                "low": entry["test_accuracy_ci95"][0],
                "high": entry["test_accuracy_ci95"][1],
                "computed": report.get("computed"),
                "img/s": report.get("images_per_second"),
            }
        )
    return sorted(out, key=lambda r: -r["test"])


def table(found: list[dict]) -> str:
    lines = [
        "| feature set | val acc | test acc | 95% interval | images extracted | extraction img/s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in found:
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]" if r["low"] is not None else "—"
        speed = f"{r['img/s']:.1f}" if r["img/s"] else "—"
        lines.append(
            f"| {r['feature set']} | {r['val']:.3f} | {r['test']:.3f} | {interval} | "
            f"{r['computed'] if r['computed'] is not None else '—'} | {speed} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the project root of the run")
    args = parser.parse_args()
    print(table(rows(args.root)))


if __name__ == "__main__":
    main()
