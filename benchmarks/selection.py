"""Today's selection defaults against the new ones, over several split seeds: test accuracy of the chosen head and cost.

Features are keyed by image content, so a re-split needs no backbone pass:
the script extracts one store once (or takes one, ``--store`` with its
``--manifest``), then for each split seed assigns every image afresh to
train / val / test (stratified, ``--split`` fractions; a pre-split source's
folders are ignored: its images are merged into one class tree), optionally
keeping ``--images`` of them (stratified) to play a small dataset, and runs
the heads stage's own code (:func:`pipeline.heads.training.train_and_write`) and the
evaluate stage's selection (:func:`pipeline.selection.leaderboard.evaluate`)
with two settings of ``heads``:

* **old** — the defaults before issue 16: selection on the val split
  (``cv: 0``), logistic regression C in {0.01, 0.1, 1, 10}, linear SVM C in
  {0.01, 0.1, 1}, no search;
* **new** — the defaults now: ``cv: auto`` (k-fold CV on train+val below
  ``cv_below`` val images per class), C searched coarse to fine over
  1e-6 … 1e4 (linear SVM 1e-6 … 1e2) with 3 bisection rounds.

Both share every other setting of params.yaml (RBF SVM, dense heads unless
``--kinds`` leaves them out). It prints, per setting, the chosen head's test
accuracy for each seed, the mean and standard deviation over seeds, and the
heads' wall time.

Usage::

    python benchmarks/selection.py --source ../shared/datasets/signs --seeds 0 1 2 3 4 --images 300
    python benchmarks/selection.py --source ../shared/datasets/signs --seeds 0 1 2 3 4 5 6 7 --images 300 --test-rest
    python benchmarks/selection.py --store features/lite0_top.zarr --manifest data/manifest.csv --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params, parse_params  # noqa: E402
from pipeline.heads.training import train_and_write  # noqa: E402
from pipeline.manifest import read_manifest  # noqa: E402
from pipeline.selection.leaderboard import evaluate  # noqa: E402

OLD = {
    "cv": 0,
    "logreg": {"C": [0.01, 0.1, 1.0, 10.0], "refine": 0},
    "svm_linear": {"C": [0.01, 0.1, 1.0], "refine": 0},
}


def extract_once(source: Path, key: str, workdir: Path) -> tuple[Path, Path]:
    """The pipeline's prepare and extract stages on ``source`` in ``workdir``: (store, manifest)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["source"] = str(source.resolve())
    params["features"] = {key: params["features"][key]}
    params["heads"]["combine"] = []
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in (
        ["pipeline.stages.prepare", "--manifest", "data/manifest.csv", "--report", "prepare.json", "--no-progress"],
        [
            "pipeline.stages.extract",
            "--feature-set",
            key,
            "--manifest",
            "data/manifest.csv",
            "--out",
            f"features/{key}.zarr",
            "--no-progress",
        ],
    ):
        subprocess.run([sys.executable, "-m", *command], cwd=workdir, env=env, check=True)
    return workdir / "features" / f"{key}.zarr", workdir / "data" / "manifest.csv"


def resplit(records, seed: int, fractions: tuple[float, float, float], images: int | None, *, test_rest: bool = False):
    """Every image assigned afresh to train/val/test per class (and ``images`` kept, stratified).

    ``test_rest``: the images not kept join test, so that the chosen head is
    scored on many images and the spread over seeds is the choice's, not the
    luck of a small test split.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for record in records:
        by_class.setdefault(record.label, []).append(record)
    share = None if images is None else images / len(records)
    out = []
    for label in sorted(by_class):
        members = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        rest = []
        if share is not None:
            keep = max(3, round(share * len(members)))
            members, rest = members[:keep], members[keep:]
        n_val = max(1, round(fractions[1] * len(members)))
        n_test = max(1, round(fractions[2] * len(members)))
        splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(members) - n_val - n_test)
        out += [dataclasses.replace(r, split=s) for r, s in zip(members, splits)]
        if test_rest:
            out += [dataclasses.replace(r, split="test") for r in rest]
    return out


def run(store: Path, records, heads, evaluate_params, workdir: Path) -> tuple[float, str, str, float]:
    """Test accuracy of the chosen head, its variant, the selection mode and the heads' wall seconds."""
    out = workdir / "heads"
    started = time.perf_counter()
    train_and_write([[store]], heads, [out / store.stem], records, progress=False, reuse=False)
    seconds = time.perf_counter() - started
    report, _, _ = evaluate(out, evaluate_params, records)
    chosen = report["feature_sets"][store.stem]
    return chosen["test_accuracy"], chosen["variant"], chosen["selection"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="an image folder to extract once (class folders; splits merged)")
    parser.add_argument("--store", type=Path, help="an existing feature store (with --manifest) instead of --source")
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--feature-set", default="lite0_top", help="the params.yaml feature set to extract")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--split", type=float, nargs=3, default=(0.7, 0.15, 0.15))
    parser.add_argument("--images", type=int, help="keep this many images (stratified) per seed: a small dataset")
    parser.add_argument("--kinds", default=None, help="comma-separated head kinds (default: params.yaml's)")
    parser.add_argument(
        "--settings",
        default="old,new",
        help="what to compare: old, new (the defaults), val (new, always the val split), "
        "cv (new, always 5-fold CV): e.g. val,cv measures where cv_below should lie",
    )
    parser.add_argument(
        "--test-rest", action="store_true", help="with --images: the images not kept join test (a large test split)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if (args.source is None) == (args.store is None):
        parser.error("give --source (extract once) or --store with --manifest")
    params = load_params(ROOT / "params.yaml")
    section = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["heads"]
    if args.kinds:
        section["kinds"] = args.kinds.split(",")
    section["combine"] = []
    known = {"old": {**section, **OLD}, "new": section, "val": {**section, "cv": 0}, "cv": {**section, "cv": 5}}
    wanted = args.settings.split(",")
    if not set(wanted) <= set(known):
        parser.error(f"--settings: choose among {', '.join(known)}; got {args.settings}")
    settings = {name: parse_params({"heads": known[name]}).heads for name in wanted}
    with tempfile.TemporaryDirectory(prefix="shoulders-selection-") as tmp:
        if args.source is not None:
            store, manifest = extract_once(args.source, args.feature_set, Path(tmp))
        else:
            store, manifest = args.store, args.manifest
        records = read_manifest(manifest)
        rows = []
        for seed in args.seeds:
            split = resplit(records, seed, tuple(args.split), args.images, test_rest=args.test_rest)
            counts = {s: sum(r.split == s for r in split) for s in ("train", "val", "test")}
            for name, heads in settings.items():
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    accuracy, variant, mode, seconds = run(store, split, heads, params.evaluate, Path(work))
                rows.append(
                    {
                        "seed": seed,
                        "setting": name,
                        "test_accuracy": accuracy,
                        "variant": variant,
                        "selection": mode,
                        "seconds": round(seconds, 1),
                        **counts,
                    }
                )
                print(
                    f"seed {seed} {name}: test {accuracy:.4f} {variant} ({mode}; {seconds:.1f} s; {counts})", flush=True
                )
    print(
        f"\n{store.stem}, {len(records)} images"
        + (f", {args.images} kept per seed" if args.images else "")
        + (", the rest in test" if args.test_rest else "")
        + f", seeds {args.seeds}\n"
    )
    print("| setting | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | std | median heads s |")
    print("|---|" + "---:|" * (len(args.seeds) + 3))
    for name in settings:
        mine = [r for r in rows if r["setting"] == name]
        accuracy = np.array([r["test_accuracy"] for r in mine])
        print(
            f"| {name} | "
            + " | ".join(f"{a:.3f}" for a in accuracy)
            + f" | {accuracy.mean():.4f} | {accuracy.std():.4f} | {np.median([r['seconds'] for r in mine]):.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
