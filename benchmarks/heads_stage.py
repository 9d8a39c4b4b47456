"""The heads stage of an earlier commit against today's, in the same run on the same features: time, growth, choices.

Each side is the stage itself (``python -m pipeline.stages.heads``) run as a
subprocess from its own checkout (``--baseline``: a git revision, checked out
once into a temporary worktree), so the figures are the whole stage as a user
runs it: interpreter start, imports, reading the stores, fitting, writing.
Runs alternate (old, new, old, new, …) so that a busy spell of the machine
hits both. Three questions, one table each:

* ``stage`` — the default heads stage over every feature set of params.yaml
  (after ``dvc repro`` built ``features/``): wall seconds, median over
  ``--repeats``, and how much CPU the process used per second of wall time;
* ``scale`` — one feature set (``--feature-set``) on the built-in synthetic
  dataset at 1×, 2× and 4× its images (``--scales``; extracted once each into
  a temporary folder): how the stage's time grows with the images;
* ``selection`` — ``--source`` (e.g. the hand signs) re-split with each
  ``--seeds`` seed as ``benchmarks/selection.py`` does, the stage of each side
  on the same store and split, then today's evaluate: the chosen head's test
  accuracy (mean, spread over seeds) and the stage's seconds.

Usage::

    python benchmarks/heads_stage.py stage --baseline a01ffa2 --repeats 3
    python benchmarks/heads_stage.py scale --baseline a01ffa2 --scales 1 2 4
    python benchmarks/heads_stage.py selection --baseline a01ffa2 --source ../shared/datasets/signs --seeds 0 1 2 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline.config import load_params  # noqa: E402
from pipeline.manifest import read_manifest, write_manifest  # noqa: E402
from pipeline.selection.leaderboard import evaluate  # noqa: E402


def worktree(revision: str, where: Path) -> Path:
    """A checkout of ``revision`` at ``where`` (git worktree, detached)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(where), revision],
        check=True,
        capture_output=True,
    )
    return where


# Settings this round added: the baseline's params reader refuses keys it does not know.
NEW_KEYS = {"heads": ("race", "control_kinds", "control_values", "near_equals")}


def for_baseline(params: Path) -> Path:
    """A copy of ``params`` without the keys the baseline does not know (its grid is otherwise the same)."""
    settings = yaml.safe_load(params.read_text(encoding="utf-8"))
    for section, keys in NEW_KEYS.items():
        for key in keys:
            settings.get(section, {}).pop(key, None)
    copy = Path(tempfile.mkdtemp(prefix="shoulders-params-")) / "params.yaml"
    copy.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return copy


def run_stage(
    code: Path, features: Path, out: Path, *, manifest: Path, params: Path, jax_cache: Path | None = None
) -> tuple[float, float]:
    """Run ``code``'s heads stage; returns (wall seconds, CPU seconds of the process and its workers).

    ``jax_cache``: the folder of JAX's compilation cache (default: a new empty
    one, so that every compilation is paid, as on a first run). The baseline
    (any code but this checkout's) reads ``params`` without this round's keys.
    """
    if code != ROOT:
        params = for_baseline(params)
    if jax_cache is None:
        jax_cache = Path(tempfile.mkdtemp(prefix="shoulders-jax-cache-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.stages.heads",
            "--features",
            str(features),
            "--out",
            str(out),
            "--manifest",
            str(manifest),
            "--params",
            str(params),
            "--no-progress",
        ],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the heads stage of {code} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def sides(args, tmp: Path) -> dict[str, Path]:
    return {"old": worktree(args.baseline, tmp / "baseline"), "new": ROOT}


def stage(args) -> None:
    with tempfile.TemporaryDirectory(prefix="shoulders-heads-") as tmp:
        codes = sides(args, Path(tmp))
        warm_cache = Path(tmp) / "jax-cache"
        common = {"manifest": ROOT / "data/manifest.csv", "params": ROOT / "params.yaml"}
        run_stage(codes["new"], ROOT / "features", Path(tmp) / "warm-up", jax_cache=warm_cache, **common)
        runs = {"old": {}, "new": {}, "new, compilation cache warm": {"jax_cache": warm_cache}}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        variants = {}
        for repeat in range(args.repeats):
            for name, options in runs.items():
                out = Path(tmp) / f"{name}-{repeat}".replace(" ", "_").replace(",", "")
                code = codes["old" if name == "old" else "new"]
                times[name].append(run_stage(code, ROOT / "features", out, **common, **options))
                variants[name] = sum(len(json.loads(f.read_text())["variants"]) for f in out.glob("*/scores.json"))
                print(
                    f"{name} #{repeat + 1}: {times[name][-1][0]:.1f} s wall, {times[name][-1][1]:.1f} s CPU", flush=True
                )
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(codes["old"])], check=False)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"baseline {args.baseline}; {args.repeats} runs each, interleaved\n"
    )
    print("| heads stage | variants | wall s (median) | min | max | CPU s / wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, measured in times.items():
        wall = [w for w, _ in measured]
        busy = statistics.median(c / w for w, c in measured)
        print(
            f"| {name} | {variants[name]} | {statistics.median(wall):.1f} | {min(wall):.1f} | {max(wall):.1f} | "
            f"{busy:.2f} |"
        )
    old = statistics.median(w for w, _ in times["old"])
    for name in ("new", "new, compilation cache warm"):
        new = statistics.median(w for w, _ in times[name])
        print(f"{name} / old = {new / old:.3f} (1/{old / new:.1f})")


def synthetic_store(workdir: Path, per_class: int, feature_set: str) -> tuple[Path, Path, Path]:
    """The built-in dataset at ``per_class`` images per class, prepared and extracted for one feature set."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["synthetic"]["per_class"] = per_class
    params["data"]["source"] = "data/synthetic"
    params["features"] = {feature_set: params["features"][feature_set]}
    params["heads"]["combine"] = []
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    for command in (
        ["pipeline.stages.synthesize", "--out", "data/synthetic", "--no-progress"],
        ["pipeline.stages.prepare", "--manifest", "data/manifest.csv", "--report", "prepare.json", "--no-progress"],
        [
            "pipeline.stages.extract",
            "--feature-set",
            feature_set,
            "--manifest",
            "data/manifest.csv",
            "--out",
            f"features/{feature_set}.zarr",
            "--no-progress",
        ],
    ):
        subprocess.run([sys.executable, "-m", *command], cwd=workdir, env=env, check=True, capture_output=True)
    return workdir / "features" / f"{feature_set}.zarr", workdir / "data" / "manifest.csv", workdir / "params.yaml"


def scale(args) -> None:
    base = load_params(ROOT / "params.yaml").synthetic.per_class
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoulders-heads-scale-") as tmp:
        codes = sides(args, Path(tmp))
        for factor in args.scales:
            work = Path(tmp) / f"x{factor}"
            work.mkdir()
            store, manifest, params = synthetic_store(work, base * factor, args.feature_set)
            images = len(read_manifest(manifest))
            for repeat in range(args.repeats):
                for name, code in codes.items():
                    wall, cpu = run_stage(code, store, work / f"{name}-{repeat}", manifest=manifest, params=params)
                    rows.append({"images": images, "side": name, "wall": wall, "cpu": cpu})
                    print(f"{images} images, {name}: {wall:.1f} s", flush=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(codes["old"])], check=False)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; baseline "
        f"{args.baseline}; feature set {args.feature_set}; median of {args.repeats}\n"
    )
    print("| images | old s | new s | new / old | new s per 1,000 images |")
    print("|---:|---:|---:|---:|---:|")
    for images in sorted({r["images"] for r in rows}):
        old = statistics.median(r["wall"] for r in rows if r["images"] == images and r["side"] == "old")
        new = statistics.median(r["wall"] for r in rows if r["images"] == images and r["side"] == "new")
        print(f"| {images} | {old:.1f} | {new:.1f} | {new / old:.3f} | {1000 * new / images:.1f} |")


def selection(args) -> None:
    from selection import extract_once, resplit

    params = load_params(ROOT / "params.yaml")
    section = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    section["heads"]["combine"] = []
    if args.kinds:
        section["heads"]["kinds"] = args.kinds.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoulders-heads-selection-") as tmp:
        codes = sides(args, Path(tmp))
        store, manifest = extract_once(args.source, args.feature_set, Path(tmp))
        section["features"] = {args.feature_set: section["features"][args.feature_set]}
        params_file = Path(tmp) / "heads-params.yaml"
        params_file.write_text(yaml.safe_dump(section, sort_keys=False), encoding="utf-8")
        records = read_manifest(manifest)
        for seed in args.seeds:
            split = resplit(records, seed, (0.7, 0.15, 0.15), None)
            split_file = Path(tmp) / f"split-{seed}.csv"
            write_manifest(split, split_file)
            for name, code in codes.items():
                out = Path(tmp) / f"{name}-{seed}"
                wall, _ = run_stage(code, store, out / store.stem, manifest=split_file, params=params_file)
                report, _, _ = evaluate(out, params.evaluate, split)
                chosen = report["feature_sets"][store.stem]
                rows.append(
                    {
                        "seed": seed,
                        "side": name,
                        "test_accuracy": chosen["test_accuracy"],
                        "variant": chosen["variant"],
                        "seconds": wall,
                    }
                )
                print(
                    f"seed {seed} {name}: test {chosen['test_accuracy']:.4f} {chosen['variant']} ({wall:.1f} s)",
                    flush=True,
                )
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(codes["old"])], check=False)
    print(
        f"\n{args.source} as {args.feature_set}, {len(records)} images, re-split 70/15/15 per seed; baseline "
        f"{args.baseline}\n"
    )
    print("| side | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | std | median stage s |")
    print("|---|" + "---:|" * (len(args.seeds) + 3))
    for name in ("old", "new"):
        mine = [r for r in rows if r["side"] == name]
        accuracy = np.array([r["test_accuracy"] for r in mine])
        print(
            f"| {name} | "
            + " | ".join(f"{a:.3f}" for a in accuracy)
            + f" | {accuracy.mean():.4f} | {accuracy.std():.4f} | {np.median([r['seconds'] for r in mine]):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", choices=("stage", "scale", "selection"))
    parser.add_argument("--baseline", required=True, help="git revision of the old side (e.g. a01ffa2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--feature-set", default="lite0_top")
    parser.add_argument("--source", type=Path, help="selection: an image folder (class folders; splits merged)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--kinds", help="selection: comma-separated head kinds (default: params.yaml's)")
    args = parser.parse_args()
    if args.question == "selection" and args.source is None:
        parser.error("selection needs --source")
    {"stage": stage, "scale": scale, "selection": selection}[args.question](args)


if __name__ == "__main__":
    main()
