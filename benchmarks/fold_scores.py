"""Scoring a fold: scikit-learn's ``accuracy_score`` + ``f1_score`` against :func:`pipeline.heads.tally.accuracy_and_macro_f1`.

A default heads stage scores ~650 fits, each on ~150 held-out images of 6
classes (one fold of train+val). Both sides score the same label pairs,
interleaved, ``--repeats`` times; the table gives the median milliseconds per
fold scored and, for the stage, those times the fits it scores.

Usage: ``python benchmarks/fold_scores.py [--images 154] [--classes 6] [--folds 650] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.heads.tally import accuracy_and_macro_f1  # noqa: E402


def scikit_learn(y_true, predicted):
    return accuracy_score(y_true, predicted), f1_score(y_true, predicted, average="macro", zero_division=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=154)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--folds", type=int, default=650, help="folds scored (a default heads stage: ~650)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(args.folds):
        y = rng.integers(0, args.classes, size=args.images)
        pairs.append((y, np.where(rng.random(args.images) < 0.9, y, rng.integers(0, args.classes, size=args.images))))
    sides = {
        "scikit-learn accuracy_score + f1_score": scikit_learn,
        "tally.accuracy_and_macro_f1": accuracy_and_macro_f1,
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, score in sides.items():
            started = time.perf_counter()
            results = [score(y, p) for y, p in pairs]
            seconds[name].append(time.perf_counter() - started)
        reference = [scikit_learn(y, p) for y, p in pairs]
        assert all(np.allclose(a, b, rtol=1e-12) for a, b in zip(results, reference)), "the scores differ"
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; {args.folds} folds of {args.images} "
        f"images, {args.classes} classes; median of {args.repeats}; scores equal to 1e-12\n"
    )
    print("| scoring | ms per fold | s per stage (folds scored) |")
    print("|---|---:|---:|")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"| {name} | {1000 * median / args.folds:.3f} | {median:.2f} |")


if __name__ == "__main__":
    main()
