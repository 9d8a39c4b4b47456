"""What curating a real dataset costs: re-split, relabel, add, remove — backbone passes and `dvc repro` time.

Copies the project (as ``benchmarks/repro_cost.py`` does: code, params.yaml,
dvc.yaml, DVC config; no data, stores, lock file or cache) and a real image set
(default ``../shared/datasets/signs``, its split folders merged into one class
tree, so that ``data.split`` and ``data.seed`` apply) into a temporary folder,
makes it a fresh git + DVC repository and times ``dvc repro`` with wall clocks:

0. cold: every stage, every image through every feature set's backbone;
(a) re-split (``data.seed`` 0 → 1);
(b) relabel 5 images (moved to another class folder);
(c) add 10% new images (held back from the cold run);
(d) remove 10% of the images.

For each: the stages DVC ran, the backbone passes per feature set (images
computed, from ``reports/extract/<key>.json``; 0 when the extract stage did not
run) and the wall time as a share of the cold run. Targets: (a), (b), (d) no
backbone pass and no extract stage run; (c) exactly the new images.

Usage: ``python benchmarks/incremental.py [--source DIR] [--keep DIR]`` from the project root.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repro_cost import copy_project, repro_env, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def merged_copy(source: Path, dest: Path, held_back: float) -> list[Path]:
    """Copy ``source`` (pre-split or not) into ``dest/<class>/``; return the files held back (the 10% to add)."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    held, kept = [], []
    for index, path in enumerate(files):
        (held if index % round(1 / held_back) == 0 else kept).append(path)
    for path in kept:
        target = dest / path.parent.name / f"{path.parent.parent.name}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return held


def timed_repro(root: Path, env: dict, keys: list[str]) -> dict:
    before = {key: _report_mtime(root, key) for key in keys}
    started = time.perf_counter()
    out = run(["dvc", "repro"], root, env)
    seconds = time.perf_counter() - started
    stages = re.findall(r"Running stage '([^']+)'", out)
    passes = {}
    for key in keys:
        report = root / "reports/extract" / f"{key}.json"
        ran = f"extract@{key}" in stages and _report_mtime(root, key) != before[key]
        passes[key] = json.loads(report.read_text())["computed"] if ran else 0
    return {"seconds": seconds, "stages": stages, "passes": passes}


def _report_mtime(root: Path, key: str) -> int:
    path = root / "reports/extract" / f"{key}.json"
    return path.stat().st_mtime_ns if path.exists() else 0


def set_param(root: Path, section: str, key: str, value) -> None:
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/datasets/signs")
    parser.add_argument("--keep", type=Path, help="build the copy here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    env = repro_env()
    with tempfile.TemporaryDirectory(prefix="shoulders-incremental-") as tmp:
        root = args.keep or Path(tmp) / "project"
        copy_project(root)
        images = root / "images"
        held = merged_copy(args.source, images, held_back=0.1)
        set_param(root, "data", "source", "images")
        import yaml

        keys = list(yaml.safe_load((root / "params.yaml").read_text())["features"])
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
            run(cmd, root, env)
        n = sum(1 for p in images.rglob("*") if p.is_file())
        rows = [("cold run", timed_repro(root, env, keys))]
        set_param(root, "data", "seed", 1)
        rows.append(("(a) re-split (data.seed 0 → 1)", timed_repro(root, env, keys)))
        classes = sorted(p for p in images.iterdir() if p.is_dir())
        for path in sorted(classes[0].iterdir())[:5]:
            path.rename(classes[1] / f"relabelled_{path.name}")
        rows.append(("(b) relabel 5 images", timed_repro(root, env, keys)))
        for path in held:
            target = images / path.parent.name / f"new_{path.parent.parent.name}_{path.name}"
            shutil.copy(path, target)
        rows.append((f"(c) add {len(held)} new images (+{100 * len(held) / n:.0f}%)", timed_repro(root, env, keys)))
        files = sorted(p for p in images.rglob("*") if p.is_file())
        removed = files[::10]
        for path in removed:
            path.unlink()
        rows.append((f"(d) remove {len(removed)} images (10%)", timed_repro(root, env, keys)))
        cold = rows[0][1]["seconds"]
        print(
            f"source: {args.source} ({n} images copied, {len(held)} held back for (c)); feature sets: "
            f"{', '.join(keys)}\n"
        )
        print("| run | backbone passes per feature set | extract stages run | wall s | % of cold | stages run |")
        print("|---|---|---|---:|---:|---|")
        for label, row in rows:
            passes = ", ".join(f"{k} {v}" for k, v in row["passes"].items())
            extracts = [s for s in row["stages"] if s.startswith("extract@")]
            print(
                f"| {label} | {passes} | {len(extracts)} | {row['seconds']:.1f} | {100 * row['seconds'] / cold:.0f}% | "
                f"{', '.join(row['stages']) or 'none'} |"
            )


if __name__ == "__main__":
    main()
