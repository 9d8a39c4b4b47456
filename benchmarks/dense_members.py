"""What a batched dense fit costs as its members grow, its members run together or one at a time.

The heads stage trains the dense variants of one input through one compiled
JAX program (:func:`pipeline.heads.dense_batch.fit_dense_heads`). Its members
can run together (``vmap``: one batched matmul per layer; what a GPU does) or
one after another through the same program with one member (what a CPU does,
:func:`pipeline.heads.dense_training._one_member_per_program`). This script
times one fit on a real store's training rows (standardised, as the stage
does) for grids of 2, 4 and 6 members — dropout {0, 0.5} × weight decay {0},
{0, 1e-3}, {0, 1e-4, 1e-3} — with the stage's defaults otherwise (256 hidden
units, 60 epochs, patience 8), each way, ``--repeats`` times, interleaved,
after one untimed fit of each (compilation), and prints a table: seconds per
fit (median, min, max) and the epochs each member ran. Together, the batch
runs until its last member stops; one at a time, each member runs its own
epochs only.

Usage (from the project root, after ``dvc repro`` built the stores)::

    python benchmarks/dense_members.py --store features/lite0_top.zarr --repeats 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.heads import dense_training  # noqa: E402
from pipeline.heads.dense import DenseHead  # noqa: E402
from pipeline.heads.dense_batch import fit_dense_heads  # noqa: E402
from pipeline.store.reader import open_feature_set  # noqa: E402

GRIDS = {
    "dropout {0, 0.5} × decay {0}": (0.0,),
    "dropout {0, 0.5} × decay {0, 1e-3}": (0.0, 1e-3),
    "dropout {0, 0.5} × decay {0, 1e-4, 1e-3}": (0.0, 1e-4, 1e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("features/lite0_top.zarr"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sklearn.preprocessing import StandardScaler

    train = open_feature_set(args.store, "train", pooling="avg")
    X = StandardScaler().fit_transform(np.asarray(train.X, np.float32)).astype(np.float32)
    y = np.asarray(train.y)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.store}: "
        f"train X {X.shape}",
        flush=True,
    )
    ways = {"together": False, "one at a time": True}
    seconds: dict[tuple[str, str], list[float]] = {(name, way): [] for name in GRIDS for way in ways}
    epochs: dict[str, list[int]] = {}
    for repeat in range(args.repeats + 1):  # the first round compiles: not timed
        for name, decays in GRIDS.items():
            for way, alone in ways.items():
                dense_training._one_member_per_program = lambda alone=alone: alone
                heads = [
                    DenseHead(hidden_units=256, dropout=d, weight_decay=w, epochs=60, patience=8, random_state=0)
                    for d in (0.0, 0.5)
                    for w in decays
                ]
                started = time.perf_counter()
                fit_dense_heads(heads, [X] * len(heads), y)
                if repeat:
                    seconds[name, way].append(time.perf_counter() - started)
                    print(f"{name}, {way}: {seconds[name, way][-1]:.2f} s", flush=True)
                epochs[name] = [h.n_epochs_ for h in heads]
    print("\n| grid | members | run | s per fit (median) | min | max | epochs per member |")
    print("|---|---:|---|---:|---:|---:|---|")
    for (name, way), times in seconds.items():
        print(
            f"| {name} | {len(epochs[name])} | {way} | {np.median(times):.2f} | {min(times):.2f} | "
            f"{max(times):.2f} | {epochs[name]} |"
        )


if __name__ == "__main__":
    main()
