"""The map's projection: scikit-learn t-SNE (what stage diagnose uses) against UMAP, on real cached features.

Times ``pipeline.diagnosis.projection.project`` (standardise, PCA to 50, Barnes-Hut
t-SNE) and umap-learn on the same PCA-50 input, in this process, and prints a
table with the median of ``--repeats`` runs, on one BLAS/OpenMP thread as the stage runs. UMAP's first call includes numba's
compilation, reported apart. umap-learn is not a dependency of shoulders: install
it (with numba, llvmlite, pynndescent) somewhere on PYTHONPATH to include it.

Usage: ``python benchmarks/projection.py --store features/lite0_top.zarr [--repeats 3]``
(run from a project that has run `dvc repro`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline.diagnosis.projection import PCA_DIMENSIONS, project
from pipeline.store.reader import open_feature_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=500)
    args = parser.parse_args()
    with threadpool_limits(limits=1):  # as stage diagnose runs them
        compare(args)


def compare(args: argparse.Namespace) -> None:
    X = np.concatenate([np.asarray(open_feature_set(args.store, split).X) for split in ("train", "val", "test")])
    print(f"{len(X)} images × {X.shape[1]} features from {args.store}")
    rows = []
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        project(X, max_iter=args.max_iter, seed=0)
        times.append(time.perf_counter() - start)
    rows.append((f"t-SNE (scikit-learn, max_iter {args.max_iter})", statistics.median(times), "-"))
    try:
        import umap
    except ImportError:
        rows.append(("UMAP (umap-learn)", None, "not installed"))
    else:
        reduced = PCA(n_components=PCA_DIMENSIONS, random_state=0).fit_transform(StandardScaler().fit_transform(X))
        start = time.perf_counter()
        umap.UMAP(random_state=0, n_jobs=1).fit_transform(reduced)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            umap.UMAP(random_state=0, n_jobs=1).fit_transform(reduced)
            times.append(time.perf_counter() - start)
        rows.append(("UMAP (umap-learn, after compilation)", statistics.median(times), f"first call {first:.1f} s"))
    print(f"| projection | median s ({args.repeats} runs) | note |\n|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {'-' if seconds is None else f'{seconds:.2f}'} | {note} |")


if __name__ == "__main__":
    main()
