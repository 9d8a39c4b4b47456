"""What a batched dense fit costs as its members grow: the dense grid's dropout × weight decay.

The heads stage trains the dense variants of one input as one Keras model
(:func:`pipeline.heads.dense_batch.fit_dense_heads`): a stack of members, one
matmul per layer for all of them. This script times one such fit on a real
store's training rows (standardised, as the stage does) for grids of 2, 4 and
6 members — dropout {0, 0.5} × weight decay {0}, {0, 1e-3}, {0, 1e-4, 1e-3} —
with the stage's defaults otherwise (256 hidden units, 60 epochs, patience 8),
``--repeats`` times each, interleaved, and prints a table: seconds per fit
(median, min, max) and the epochs each member ran. The batch runs until its
last member stops, so a member without early stopping sets the length.

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
    seconds: dict[str, list[float]] = {name: [] for name in GRIDS}
    epochs: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for name, decays in GRIDS.items():
            heads = [
                DenseHead(hidden_units=256, dropout=d, weight_decay=w, epochs=60, patience=8, random_state=0)
                for d in (0.0, 0.5)
                for w in decays
            ]
            started = time.perf_counter()
            fit_dense_heads(heads, [X] * len(heads), y)
            seconds[name].append(time.perf_counter() - started)
            epochs[name] = [h.n_epochs_ for h in heads]
            print(f"{name}: {seconds[name][-1]:.2f} s", flush=True)
    print("\n| grid | members | s per fit (median) | min | max | epochs per member |")
    print("|---|---:|---:|---:|---:|---|")
    for name, times in seconds.items():
        print(
            f"| {name} | {len(epochs[name])} | {np.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | "
            f"{epochs[name]} |"
        )


if __name__ == "__main__":
    main()
