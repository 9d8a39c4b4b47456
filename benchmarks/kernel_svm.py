"""The RBF SVM head on its kernel matrix against scikit-learn's SVC, on the cached features.

For each default feature set of params.yaml (its store built by ``dvc repro``),
the train+val rows (average pooling) are split as the heads stage's 5-fold
cross-validation splits them (stratified, seeded) and standardised on each
fold's training rows; on every fold both heads are fitted at every C of the
default grid (``heads.svm_rbf.C``, γ ``scale``), one BLAS thread, as a worker
of the stage fits them:

- ``SVC``: scikit-learn's RBF SVC (libsvm evaluates the kernel itself);
- ``KernelMatrixSVC``: :mod:`pipeline.heads.kernel_svm`, the same problem on
  the kernel matrix computed once per fold (the C values share it).

It prints, per feature set, the summed fit seconds of each (median of
``--repeats``, interleaved), their ratio, and the agreement: the largest
difference of the held-out rows' decision values and the share predicted alike.

Usage: ``python benchmarks/kernel_svm.py [--repeats 3]`` from the project root.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params  # noqa: E402
from pipeline.heads.kernel_svm import KernelMatrixSVC  # noqa: E402
from pipeline.store.layout import store_path  # noqa: E402
from pipeline.store.reader import open_feature_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    params = load_params()
    grid = params.heads.grid("svm_rbf")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; C {list(grid.C)}")
    print("\n| feature set | rows × width | SVC s | KernelMatrixSVC s | ratio | max decision diff | predicted alike |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key in params.features:
        store = store_path(Path("features"), key)
        parts = [open_feature_set(store, split) for split in ("train", "val")]
        X = np.concatenate([np.asarray(p.X, np.float32) for p in parts])
        y = np.concatenate([p.y for p in parts])
        folds = []
        for fit, held in StratifiedKFold(5, shuffle=True, random_state=params.heads.seed).split(X, y):
            scaler = StandardScaler().fit(X[fit])
            folds.append((scaler.transform(X[fit]), y[fit], scaler.transform(X[held])))
        seconds = {"SVC": [], "KernelMatrixSVC": []}
        decisions = {}
        with threadpool_limits(1):
            for _ in range(args.repeats):
                for name, make in (("SVC", SVC), ("KernelMatrixSVC", KernelMatrixSVC)):
                    started = time.perf_counter()
                    fitted = [make(C=C, gamma="scale").fit(X_fit, y_fit) for X_fit, y_fit, _ in folds for C in grid.C]
                    seconds[name].append(time.perf_counter() - started)
                    decisions[name] = np.concatenate(
                        [m.decision_function(folds[i // len(grid.C)][2]) for i, m in enumerate(fitted)]
                    )
        old, new = (statistics.median(seconds[n]) for n in ("SVC", "KernelMatrixSVC"))
        diff = float(np.abs(decisions["SVC"] - decisions["KernelMatrixSVC"]).max())
        alike = float(np.mean(decisions["SVC"].argmax(1) == decisions["KernelMatrixSVC"].argmax(1)))
        print(
            f"| {key} | {X.shape[0]} × {X.shape[1]} | {old:.3f} | {new:.3f} | {old / new:.1f} | {diff:.1e} | {alike:.3f} |"
        )


if __name__ == "__main__":
    main()
