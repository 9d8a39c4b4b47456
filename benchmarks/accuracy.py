"""Test accuracy of the chosen model and its cost: today's defaults against flip averaging, input sizes and both.

For each dataset (``--datasets``: the flower photos and the hand signs of
``../shared/datasets``) the script runs the pipeline's prepare stage once (its
defaults remove byte-identical images, so the signs' duplicates that straddle
splits cannot leak into test), then the extract stage once per distinct feature
set of the configurations asked for. Stores are keyed by image content, so
each seed's re-split (:func:`selection.resplit`: every image assigned afresh to
train / val / test, stratified, 70/15/15) reads the same stores and no seed
runs a backbone. Per seed and configuration it runs the heads stage's code
(:func:`pipeline.heads.training.train_and_write`) and the evaluate stage's
choice (:func:`choose`: the overall best on validation, the soft-voting
candidates included) and scores the chosen model once on test. Heads are fitted
once per (store, heads settings, seed) and shared by configurations that differ
only in what evaluate reads.

A configuration is a set of overrides of params.yaml (:data:`CONFIGS`):
``features.sets`` lists the feature sets of params.yaml it runs (default
``[lite0_top]``: EfficientNet-Lite0, top activation; several are one heads
run, as the heads stage runs them, so evaluate's ensemble and near-equals vote
work across them), ``features.combine`` its combinations (lists of those
names; default none), ``features.<key>`` changes every listed feature set,
any other ``<section>.<key>`` that section. ``--add NAME:key=value,key=value``
adds one without editing the file (values are YAML). Printed: per dataset and configuration, the chosen model's
test accuracy over the seeds (mean, standard deviation, range), its most
frequent choice, and the cost: the extract stage's wall seconds for the store
(once for every seed), the backbone's milliseconds per image (what each image
costs again at prediction time) and the heads stage's median seconds per seed.

Usage::

    python benchmarks/accuracy.py                                    # both datasets, seeds 0-7, every config
    python benchmarks/accuracy.py --datasets flowers --seeds 0 1 --configs defaults flip
    python benchmarks/accuracy.py --add "vote3:heads.near_equals=3" --configs defaults vote3
    python benchmarks/accuracy.py --workdir /tmp/accuracy            # keep the stores: a rerun extracts nothing
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
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

from selection import resplit  # noqa: E402

from pipeline.config import parse_params  # noqa: E402
from pipeline.heads.training import train_and_write  # noqa: E402
from pipeline.manifest import read_manifest  # noqa: E402
from pipeline.provenance import fingerprint  # noqa: E402
from pipeline.selection.leaderboard import evaluate  # noqa: E402

DATASETS = {"flowers": ROOT.parent / "shared/datasets/flowers", "signs": ROOT.parent / "shared/datasets/signs"}
BASE = "lite0_top"  # the feature set of params.yaml a configuration runs unless it lists others
# The default run's pretrained feature sets (its random-weights control aside) and its combination.
ALL_SETS = {
    "features.sets": ["lite0_top", "lite0_block6", "lite1_top", "lite2_top"],
    "features.combine": [["lite0_top", "lite0_block6"]],
}
# name → overrides: `features.<key>` of the feature set, `<section>.<key>` of params.yaml.
CONFIGS: dict[str, dict] = {
    "defaults": {},
    "flip": {"features.flip": "average"},
    "size260": {"features.size": 260},
    "size300": {"features.size": 300},
    "flip+size300": {"features.flip": "average", "features.size": 300},
    # The soft vote of the near-equals (heads.near_equals, on by default) switched off: today's defaults
    # without it. Point this entry (or an --add) at another setting of that key to measure it.
    "near_equals_off": {"heads.near_equals": 0},
    # The default run's feature sets: the near-equals vote and the ensemble across them, against picking one.
    "all_sets": ALL_SETS,
    "all_sets_near_equals_off": {**ALL_SETS, "heads.near_equals": 0},
    # ...and the ensemble of every feature set's best head, not of the 3 best on val.
    "all_sets_ensemble5": {**ALL_SETS, "heads.ensemble": 5},
    # ...and one more combination: the three backbones' top activations side by side (3 × 1,280 features).
    "all_sets_tops": {
        **ALL_SETS,
        "features.combine": [*ALL_SETS["features.combine"], ["lite0_top", "lite1_top", "lite2_top"]],
    },
}
# Keys of `heads` that only the evaluate stage reads: configurations differing only in them share their heads.
EVALUATE_KEYS = ("ensemble", "near_equals")
SPLIT = (0.7, 0.15, 0.15)


def configured(base: dict, overrides: dict) -> tuple[dict[str, dict], list[list[str]], dict]:
    """params.yaml with ``overrides`` applied: (each listed feature set's spec by name, combinations, other sections)."""
    sections = json.loads(json.dumps(base))
    features = sections.pop("features")
    names = overrides.get("features.sets", [BASE])
    combine = overrides.get("features.combine", [])
    unknown = sorted({n for n in [*names, *(m for c in combine for m in c)] if n not in features})
    if unknown:
        raise SystemExit(f"features.sets / features.combine name {unknown}, not in params.yaml's {list(features)}")
    specs = {name: dict(features[name]) for name in names}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key:
            raise SystemExit(f"an override is <section>.<key>=value; received {dotted!r}")
        if section == "features":
            if key not in ("sets", "combine"):
                for spec in specs.values():
                    spec[key] = value
        else:
            sections.setdefault(section, {})[key] = value
    sections["heads"]["combine"] = []
    return specs, [list(c) for c in combine], sections


def feature_key(spec: dict) -> str:
    """A store name per distinct spec (readable, and unique by its fingerprint; the backbone and cut are in it)."""
    size = spec.get("size") or "default"
    return f"lite_{size}_{spec.get('flip', 'none')}_{fingerprint(spec, length=6)}"


def prepare_once(source: Path, base: dict, workdir: Path) -> Path:
    """The prepare stage on ``source`` in ``workdir`` (skipped when its manifest is there): the manifest."""
    manifest = workdir / "data" / "manifest.csv"
    if manifest.is_file():
        return manifest
    params = {**base, "data": {**base["data"], "source": str(source.resolve())}}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    _stage(workdir, "prepare", "--manifest", "data/manifest.csv", "--report", "reports/prepare.json")
    return manifest


def extract_once(key: str, spec: dict, workdir: Path) -> dict:
    """The extract stage for one feature set in ``workdir``: its cost, measured the first time it ran."""
    cost_file = workdir / "costs" / f"{key}.json"
    params = yaml.safe_load((workdir / "params.yaml").read_text(encoding="utf-8"))
    params["features"] = {key: spec}
    params["heads"]["combine"] = []
    params_file = workdir / f"params-{key}.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    report = workdir / "reports" / "extract" / f"{key}.json"
    _stage(
        workdir,
        "extract",
        *("--feature-set", key, "--out", f"features/{key}.zarr", "--manifest", "data/manifest.csv"),
        *("--report", str(report), "--params", str(params_file)),
    )
    wall = time.perf_counter() - started
    accounting = json.loads(report.read_text(encoding="utf-8"))
    if accounting["computed"] and accounting["computed"] == accounting["images"]:
        steady = accounting.get("steady_images_per_second") or accounting.get("images_per_second")
        cost = {"extract_seconds": round(wall, 1), "ms_per_image": round(1000 / steady, 2) if steady else None}
        cost_file.parent.mkdir(parents=True, exist_ok=True)
        cost_file.write_text(json.dumps(cost) + "\n", encoding="utf-8")
    if not cost_file.is_file():
        return {"extract_seconds": None, "ms_per_image": None}
    return json.loads(cost_file.read_text(encoding="utf-8"))


def _stage(workdir: Path, name: str, *arguments: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{name}", *arguments, "--no-progress"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"stage {name} failed in {workdir} (exit {done.returncode}):\n{done.stderr[-3000:]}")


def choose(heads_dir: Path, params, records) -> dict:
    """The evaluate stage's overall choice (as ``pipeline.stages.evaluate`` calls it): ``report["best"]``."""
    report, _, _ = evaluate(
        heads_dir, params.evaluate, records, ensemble=params.heads.ensemble, near=params.heads.near_equals
    )
    return report["best"]


def run_dataset(name: str, source: Path, configs: dict, seeds: list[int], base: dict, workdir: Path) -> list[dict]:
    """Every configuration on every seed of one dataset: one row each."""
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = prepare_once(source, base, workdir)
    records = read_manifest(manifest)
    plans, costs = {}, {}
    for config, overrides in configs.items():
        specs, combine, sections = configured(base, overrides)
        keys = {set_name: feature_key(spec) for set_name, spec in specs.items()}
        for set_name, spec in specs.items():
            if keys[set_name] not in costs:
                print(f"{name}: extracting {keys[set_name]} ({set_name}: {spec})", flush=True)
                costs[keys[set_name]] = extract_once(keys[set_name], spec, workdir)
        # Each store alone, then each combination of stores: the heads stage's groups (by store key, and by name).
        members = [[n] for n in specs] + combine
        groups = [[keys[n] for n in group] for group in members]
        names = {"+".join(group): "+".join(named) for group, named in zip(groups, members)}
        params = parse_params({**sections, "features": {keys[n]: spec for n, spec in specs.items()}})
        heads = {k: v for k, v in sections["heads"].items() if k not in EVALUATE_KEYS}
        stores = list(dict.fromkeys(keys.values()))
        # the backbone passes of every store: summed (None where one was not measured)
        cost = {
            c: None if any(costs[k][c] is None for k in stores) else round(sum(costs[k][c] for k in stores), 2)
            for c in ("extract_seconds", "ms_per_image")
        }
        plans[config] = (groups, names, params, fingerprint({"groups": groups, "heads": heads}), stores, cost)
    rows = []
    fitted: dict[tuple, float] = {}
    for seed in seeds:
        split = resplit(records, seed, SPLIT, None)
        for config, (groups, names, params, heads_id, stores, cost) in plans.items():
            out = workdir / "heads" / f"seed{seed}-{heads_id}"
            seconds = None
            if (heads_id, seed) not in fitted:
                started = time.perf_counter()
                paths = [[workdir / "features" / f"{key}.zarr" for key in group] for group in groups]
                outs = [out / "+".join(group) for group in groups]
                train_and_write(paths, params.heads, outs, split, progress=False, reuse=False)
                seconds = fitted[heads_id, seed] = time.perf_counter() - started
            best = choose(out, params, split)
            # The variant (with its feature set when there are several), or a soft-vote candidate's name.
            if best["feature_set"] not in names:
                chosen = best["feature_set"]
            elif len(names) == 1:
                chosen = best["variant"]
            else:
                chosen = f"{names[best['feature_set']]}/{best['variant']}"
            rows.append(
                {
                    "dataset": name,
                    "config": config,
                    "seed": seed,
                    "test_accuracy": best["test_accuracy"],
                    "chosen": chosen,
                    "heads_seconds": None if seconds is None else round(seconds, 1),
                    "store": ",".join(stores),
                    **cost,
                }
            )
            print(
                f"{name} seed {seed} {config}: test {best['test_accuracy']:.4f} ({rows[-1]['chosen']})"
                + (f", heads {seconds:.1f} s" if seconds is not None else ", heads shared"),
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | config | test accuracy mean | std | min | max | most chosen kind | extract s (once) | ms / image "
        "| heads s / seed |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for (dataset, config), mine in _grouped(rows).items():
        accuracy = np.array([r["test_accuracy"] for r in mine])
        # by head kind (a variant is [<feature set>/]<pooling>-<kind>-<settings>), or the candidate's name (a vote)
        kinds = [_kind(r["chosen"]) for r in mine]
        chosen, count = collections.Counter(kinds).most_common(1)[0]
        heads = [r["heads_seconds"] for r in mine if r["heads_seconds"] is not None]
        extract = mine[0]["extract_seconds"]
        per_image = mine[0]["ms_per_image"]
        lines.append(
            f"| {dataset} | {config} | {accuracy.mean():.4f} | {accuracy.std():.4f} | {accuracy.min():.3f} | "
            f"{accuracy.max():.3f} | {chosen} ({count}/{len(mine)}) | "
            + ("-" if extract is None else f"{extract:.0f}")
            + " | "
            + ("-" if per_image is None else f"{per_image:.1f}")
            + " | "
            + (f"{np.median(heads):.1f}" if heads else "shared")
            + " |"
        )
    return "\n".join(lines)


def _kind(chosen: str) -> str:
    variant = chosen.rsplit("/", 1)[-1]
    return variant.split("-")[1] if variant.count("-") >= 2 else chosen


def _grouped(rows: list[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["dataset"], row["config"]), []).append(row)
    return grouped


def parse_added(entries: list[str]) -> dict[str, dict]:
    """``NAME:key=value,key=value`` entries as configurations (values parsed as YAML)."""
    added = {}
    for entry in entries:
        name, _, body = entry.partition(":")
        if not name or not body:
            raise SystemExit(f"--add takes NAME:key=value[,key=value...]; received {entry!r}")
        overrides = {}
        for item in body.split(","):
            key, _, value = item.partition("=")
            overrides[key.strip()] = yaml.safe_load(value)
        added[name] = overrides
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--configs", nargs="+", help=f"which configurations (default: all of {list(CONFIGS)})")
    parser.add_argument("--add", action="append", default=[], help="NAME:key=value,... one more configuration")
    parser.add_argument("--kinds", help="comma-separated head kinds (default: params.yaml's)")
    parser.add_argument("--workdir", type=Path, help="keep manifests and stores here (a rerun extracts nothing)")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    known = {**CONFIGS, **parse_added(args.add)}
    names = args.configs or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {list(known)}")
    base = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    if args.kinds:
        base["heads"]["kinds"] = args.kinds.split(",")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoulders-accuracy-") as tmp:
        workdir = args.workdir or Path(tmp)
        for dataset in args.datasets:
            configs = {n: known[n] for n in names}
            rows += run_dataset(dataset, DATASETS[dataset], configs, args.seeds, base, workdir / dataset)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; feature set {BASE} of "
        f"params.yaml (or the config's features.sets) with each config's overrides; "
        f"re-split {'/'.join(str(round(100 * s)) for s in SPLIT)} per seed, seeds {args.seeds}; "
        f"head kinds {base['heads']['kinds']}; {time.perf_counter() - started:.0f} s\n"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
