"""A sweep of head variants on cached features against one end-to-end training through the frozen backbone.

The naive way to compare heads is to train each one on top of the frozen
backbone: every epoch runs every training image through the backbone. The
cached way runs the backbone once (the extract stage) and sweeps heads on the
stored features. This script measures both in the same run, on the default
feature sets of params.yaml (their stores must exist: ``dvc repro`` builds them):

1. **sweep** — the heads stage's own code (:func:`pipeline.heads.training.train_and_write`,
   one pooled run, nothing reused) over every default feature set (or
   ``--feature-sets``) with a grid of 20 variants each: pooling avg and
   avg+max, logistic regression on a C path, linear and RBF SVMs, and dense
   heads with ``--epochs`` epochs each (no early stopping), selected on the val
   split. Run twice: with the dense variants of a feature set trained together
   as members of one JAX program (``heads.dense.batched: true``, the default)
   and each alone (``false``). Each is timed from the first store read to the
   last fit; JAX's import, timed once before both, is added to each (the heads
   stage pays it once). The first run compiles the dense programs (no
   compilation cache on disk: a fresh one in a temporary folder).
2. **end to end** — one dense head (256 units, dropout 0.5, the same Adam
   settings and batch size) trained for the same ``--epochs`` epochs on top of the
   frozen EfficientNet-Lite0 of the first feature set, on the training images
   decoded once into memory beforehand (decoding is not timed, which favours
   this side), then scored on the validation images once.

Usage: ``python benchmarks/sweep.py [--epochs 10] [--n-jobs 2] [--features DIR --manifest CSV]`` from the
project root; image paths of the manifest are read relative to the folder above the manifest's.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params, parse_params  # noqa: E402
from pipeline.heads.training import train_and_write  # noqa: E402
from pipeline.heads.variants import expand_grid  # noqa: E402
from pipeline.manifest import read_manifest  # noqa: E402
from pipeline.store.layout import store_path  # noqa: E402


def sweep_grid(epochs: int, n_jobs: int, batched: bool = True):
    return parse_params(
        {
            "heads": {
                "kinds": ["logreg", "svm_linear", "svm_rbf", "dense"],
                "pooling": ["avg", "avgmax"],
                "n_jobs": n_jobs,
                "cv": 0,
                "logreg": {"C": [0.01, 0.1, 1.0, 10.0], "refine": 0},
                "svm_linear": {"C": [0.01, 0.1], "refine": 0},
                "svm_rbf": {"C": [1.0, 10.0], "gamma": ["scale"]},
                "dense": {
                    "hidden_units": [256],
                    "dropout": [0.0, 0.5],
                    "weight_decay": [0.0],
                    "learning_rate": [0.001],
                    "epochs": [epochs],
                    "batch_size": 64,
                    "patience": 0,
                    "batched": batched,
                },
            }
        }
    ).heads


def run_sweep(keys, features_dir: Path, heads, records) -> tuple[float, int, list[dict]]:
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = train_and_write(
            [[store_path(features_dir, key)] for key in keys],
            heads,
            [Path(tmp) / key for key in keys],
            records,
            progress=False,
            reuse=False,
        )
        for key, (key_rows, _) in zip(keys, results):
            rows += [{**r, "feature_set": key} for r in key_rows]
    return time.perf_counter() - started, len(rows), rows


def where_time_goes(rows: list[dict]) -> dict[str, float]:
    """Seconds of fitting by head kind (summed over variants: the loky workers' fits overlap this process's)."""
    kinds: dict[str, float] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0.0) + row["fit_seconds"]
    kinds["preprocess"] = sum({(r["feature_set"], r["pooling"]): r["preprocess_seconds"] for r in rows}.values())
    return kinds


def run_end_to_end(spec, seed: int, manifest: Path, epochs: int, batch_size: int) -> dict:
    import keras
    import tensorflow as tf

    from pipeline.backbones import build_cut_model
    from pipeline.extraction.inputs import image_batches

    root = manifest.resolve().parents[1]
    records = read_manifest(manifest)
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    cut = build_cut_model(spec, seed=seed)
    size = int(cut.provenance["input_size"])

    def decode(rs):
        paths = [str(root / r.path) for r in rs]
        return np.concatenate([np.asarray(b) for b in image_batches(paths, size=size, batch_size=64)])

    X_train, X_val = decode(train), decode(val)
    y_train = np.array([r.label for r in train])
    y_val = np.array([r.label for r in val])
    n_classes = int(max(y_train.max(), y_val.max()) + 1)

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    cut.model.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Lambda(cut.preprocess, name="preprocess")(inputs)
    x = cut.model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    steps = math.ceil(len(y_train) / batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", steps_per_execution=steps
    )
    data = (
        tf.data.Dataset.from_tensor_slices((X_train, y_train))
        .shuffle(len(y_train), seed=seed)
        .batch(batch_size)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    predicted = np.argmax(model.predict(X_val, batch_size=batch_size, verbose=0), axis=1)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "val_accuracy": float((predicted == y_val).mean()),
        "images_per_epoch": len(y_train),
        "val_images": len(y_val),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every dense head, both sides")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--features", type=Path, default=Path("features"), help="folder of the feature stores")
    parser.add_argument("--manifest", type=Path, default=Path("data/manifest.csv"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--feature-sets", default=None, help="comma-separated feature sets to sweep (default: every one of params.yaml)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    params = load_params(args.params)
    keys = args.feature_sets.split(",") if args.feature_sets else list(params.features)
    unknown = [k for k in keys if k not in params.features]
    if unknown:
        raise SystemExit(f"--feature-sets: unknown {unknown}; valid: {', '.join(params.features)}")
    heads = sweep_grid(args.epochs, args.n_jobs)
    n_grid = len(expand_grid(heads)) * len(keys)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; feature sets: {', '.join(keys)}; {n_grid} variants; {args.epochs} epochs per "
        "dense head",
        flush=True,
    )
    records = read_manifest(args.manifest)
    started = time.perf_counter()
    jax = importlib.import_module("jax")  # timed once: the heads stage imports JAX once
    import_seconds = time.perf_counter() - started
    cache = tempfile.TemporaryDirectory(prefix="shoulders-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", cache.name)  # cold: nothing compiled before
    sweeps = {}
    for batched in (True, False):
        seconds, n_variants, rows = run_sweep(
            keys, args.features, sweep_grid(args.epochs, args.n_jobs, batched), records
        )
        sweeps[batched] = (seconds + import_seconds, n_variants, rows)
        print(
            f"sweep ({'batched' if batched else 'each dense head alone'}) done: {seconds:.1f} s "
            f"+ {import_seconds:.1f} s JAX import",
            flush=True,
        )
    e2e = run_end_to_end(params.features[keys[0]], params.extract.seed, args.manifest, args.epochs, 64)
    per_image = e2e["seconds"] / (args.epochs * e2e["images_per_epoch"] + e2e["val_images"])

    print()
    print("| run | variants | dense epochs | wall s | wall / end to end | best val acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for batched, label in ((True, "dense heads batched"), (False, "each dense head alone")):
        seconds, n_variants, rows = sweeps[batched]
        best = max(rows, key=lambda r: r["val_accuracy"])
        print(
            f"| sweep on cached features, {label} ({len(keys)} feature sets, n_jobs={args.n_jobs}) | {n_variants} | "
            f"{args.epochs} | {seconds:.1f} | {seconds / e2e['seconds']:.3f} | "
            f"{best['val_accuracy']:.4f} ({best['feature_set']}/{best['variant']}) |"
        )
    print(
        f"| one dense head end to end through frozen {params.features[keys[0]].backbone} ({keys[0]}) | 1 | "
        f"{args.epochs} | {e2e['seconds']:.1f} | 1 | {e2e['val_accuracy']:.4f} |"
    )
    print()
    print(f"where the time goes (s): JAX import {import_seconds:.1f}; fitting summed by kind —")
    for batched in (True, False):
        spent = where_time_goes(sweeps[batched][2])
        print(f"  {'batched' if batched else 'alone  '}: " + ", ".join(f"{k} {v:.1f}" for k, v in spent.items()))
    lone_rows, batch_rows = sweeps[False][2], sweeps[True][2]
    same = sum(
        a["val_correct"] == b["val_correct"]
        for a, b in zip(
            sorted(lone_rows, key=lambda r: (r["feature_set"], r["variant"])),
            sorted(batch_rows, key=lambda r: (r["feature_set"], r["variant"])),
        )
        if a["kind"] == "dense"
    )
    print(
        f"dense variants whose val predictions agree batched and alone: {same} of "
        f"{sum(r['kind'] == 'dense' for r in lone_rows)}"
    )
    n_variants = sweeps[True][1]
    images = sum((r["n_epochs"] or 1) * e2e["images_per_epoch"] + e2e["val_images"] for r in batch_rows)
    print(
        f"end to end, measured {1000 * per_image:.1f} ms per image per pass; the {n_variants} variants "
        f"that way would take ~{per_image * images:,.0f} s"
    )


if __name__ == "__main__":
    main()
