"""The linear SVM head in the row space of its training rows against scikit-learn's LinearSVC, on the cached features.

For each feature store (default: every default feature set of params.yaml,
built by ``dvc repro``) and pooling, the train+val rows are standardised and
split as the heads stage's 5-fold cross-validation splits them (stratified,
seeded); on the first fold's training rows both heads are fitted at every C of
the default coarse search (``heads.svm_linear.C``: 1e-6 … 1e2):

- ``LinearSVC``: scikit-learn's, on the features as they are (liblinear's dual
  coordinate descent, since rows are fewer than columns) — the head before;
- ``RowSpaceLinearSVC``: :mod:`pipeline.heads.linear_svm`, the same dual on
  ``Xᵀ = QR``'s ``Rᵀ`` (n_samples columns), coefficients mapped back.

It prints, per feature set and pooling, the summed fit seconds of each (the
thin QR included), their ratio, and the agreement: the largest coefficient
difference relative to the largest coefficient, and the share of held-out
fold rows predicted alike.

Usage: ``python benchmarks/linear_svm.py [--feature-sets lite0_top,...] [--poolings avg,avgmax]`` from the project root.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from pipeline.heads.linear_svm import RowSpaceLinearSVC  # noqa: E402
from pipeline.store.layout import store_path  # noqa: E402
from pipeline.store.reader import read_pooled  # noqa: E402


def fit_all(make, X, y, Cs) -> tuple[float, list]:
    fitted, started = [], time.perf_counter()
    for C in Cs:
        fitted.append(make(C).fit(X, y))
    return time.perf_counter() - started, fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("features"))
    parser.add_argument("--manifest", type=Path, default=Path("data/manifest.csv"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--feature-sets", default=None, help="comma-separated (default: every one of params.yaml)")
    parser.add_argument("--poolings", default="avg,avgmax")
    args = parser.parse_args()
    params = load_params(args.params)
    keys = args.feature_sets.split(",") if args.feature_sets else list(params.features)
    unknown = [k for k in keys if k not in params.features]
    if unknown:
        raise SystemExit(f"--feature-sets: unknown {unknown}; valid: {', '.join(params.features)}")
    poolings = args.poolings.split(",")
    Cs = params.heads.grid("svm_linear").C
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; C: {', '.join(f'{c:g}' for c in Cs)}; first of 5 folds of train+val"
    )
    print()
    print(
        "| feature set | pooling | fit rows × features | LinearSVC s | row space s | × faster | max rel. coef diff "
        "| held-out predictions alike |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    warnings.simplefilter("ignore", ConvergenceWarning)  # both heads hit the same iteration cap at the same C
    totals = [0.0, 0.0]
    for key in keys:
        read = read_pooled(store_path(args.features, key), ["train", "val"], poolings=poolings, manifest=args.manifest)
        for pooling in poolings:
            X = np.concatenate([np.asarray(read[s][pooling].X, np.float32) for s in ("train", "val")])
            y = np.concatenate([read[s][pooling].y for s in ("train", "val")])
            fit, held = next(StratifiedKFold(5, shuffle=True, random_state=params.heads.seed).split(X, y))
            scaler = StandardScaler().fit(X[fit])
            X_fit, X_held = scaler.transform(X[fit]), scaler.transform(X[held])
            seed = params.heads.seed
            before, plain = fit_all(lambda C: LinearSVC(C=C, random_state=seed), X_fit, y[fit], Cs)
            after, reduced = fit_all(lambda C: RowSpaceLinearSVC(C=C, random_state=seed), X_fit, y[fit], Cs)
            totals[0] += before
            totals[1] += after
            diff = max(float(np.abs(a.coef_ - b.coef_).max() / np.abs(a.coef_).max()) for a, b in zip(plain, reduced))
            alike = np.mean([np.mean(a.predict(X_held) == b.predict(X_held)) for a, b in zip(plain, reduced)])
            print(
                f"| {key} | {pooling} | {X_fit.shape[0]} × {X_fit.shape[1]} | {before:.2f} | {after:.2f} | "
                f"{before / after:.2f} | {diff:.1e} | {alike:.4f} |",
                flush=True,
            )
    print(f"| all | | | {totals[0]:.2f} | {totals[1]:.2f} | {totals[0] / totals[1]:.2f} | | |")


if __name__ == "__main__":
    main()
