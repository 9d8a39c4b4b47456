"""Stage heads: train every head variant of the grid on one feature set.

Reads  the feature store ``--features`` (train and val splits) and
       ``params.yaml`` section ``heads``.
Writes ``--out`` (``heads/<key>/``): one fitted scikit-learn pipeline per
       variant (``<variant>.joblib``) and ``scores.json`` with each variant's
       validation accuracy, macro-F1 and fit seconds, plus the store's provenance.

The test split is not read here: selection happens on validation only, and the
evaluate stage scores the selected heads on test once.

Usage: ``python -m pipeline.train_heads --features features/KEY.zarr --out heads/KEY``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Sequence

import joblib
import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from pipeline.stage import run_stage
from pipeline.config import HeadsParams, load_params
from pipeline.heads import Variant, expand_grid, make_estimator
from pipeline.store import open_feature_set, open_store

log = logging.getLogger(__name__)
SCORES_FILE = "scores.json"


def fit_variant(variant: Variant, heads: HeadsParams, X_train: np.ndarray, y_train: np.ndarray,
                X_val: np.ndarray, y_val: np.ndarray):
    """Fit one variant on train and score it on validation.

    Returns
    -------
    estimator : sklearn Pipeline, fitted
    row : dict
        ``variant``, ``kind``, ``pooling``, hyperparameters, ``val_accuracy``,
        ``val_macro_f1``, ``fit_seconds``.
    """
    estimator = make_estimator(variant, heads)
    started = time.perf_counter()
    estimator.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - started
    predicted = estimator.predict(X_val) if len(y_val) else np.zeros(0, int)
    row = {"variant": variant.id, "kind": variant.kind, "pooling": variant.pooling,
           "params": dict(variant.params),
           "val_accuracy": float(accuracy_score(y_val, predicted)) if len(y_val) else None,
           "val_macro_f1": float(f1_score(y_val, predicted, average="macro")) if len(y_val) else None,
           "fit_seconds": round(fit_seconds, 4)}
    return estimator, row


def train_heads(features: Path, heads: HeadsParams, out: Path, *, progress: bool = True) -> list[dict]:
    """Fit the whole grid on one store in parallel and save every fitted head.

    Returns
    -------
    list of dict
        One score row per variant, in grid order.
    """
    from tqdm.auto import tqdm

    variants = expand_grid(heads)
    data = {}
    for pooling in heads.pooling:
        train = open_feature_set(features, "train", pooling=pooling)
        val = open_feature_set(features, "val", pooling=pooling)
        data[pooling] = (train.X, train.y, val.X, val.y)
        log.info("%s pooling=%s: train X %s, val X %s", features.name, pooling, train.X.shape, val.X.shape)
    if not len(data[heads.pooling[0]][3]):
        log.warning("%s has no validation images: variants cannot be compared (set data.split.val > 0)",
                    features)
    out.mkdir(parents=True, exist_ok=True)
    # joblib memory-maps the large feature arrays for its workers instead of copying them.
    jobs = (joblib.delayed(fit_variant)(v, heads, *data[v.pooling]) for v in variants)
    rows = []
    runner = joblib.Parallel(n_jobs=heads.n_jobs, return_as="generator")
    for variant, (estimator, row) in zip(variants, tqdm(runner(jobs), total=len(variants),
                                                        desc=f"heads {features.stem}", unit="variant",
                                                        disable=not progress)):
        joblib.dump(estimator, out / f"{variant.id}.joblib")
        rows.append(row)
        log.info("%-40s val acc %.4f  (%.2f s)", row["variant"], row["val_accuracy"] or float("nan"),
                 row["fit_seconds"])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, type=Path, help="a feature store, e.g. features/KEY.zarr")
    parser.add_argument("--out", required=True, type=Path, help="folder for the fitted heads, e.g. heads/KEY")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    heads = load_params(args.params).heads
    rows = train_heads(args.features, heads, args.out, progress=not args.no_progress)
    provenance = dict(open_store(args.features).attrs["provenance"])
    scores = {"feature_set": args.features.stem, "store": str(args.features), "provenance": provenance,
              "variants": rows}
    (args.out / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
