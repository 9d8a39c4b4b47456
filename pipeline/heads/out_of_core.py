"""The grid trained from a store chunk by chunk: each kind's streaming form fitted from dask arrays.

The heads stage (:mod:`pipeline.heads.training`) goes out of core when the
pooled training features exceed ``heads.memory_limit_mb`` (or
``heads.out_of_core: true``); :func:`fit_out_of_core` then fits every variant
whose kind has a streaming form in the registry, one block in memory at a time.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.config import HeadsParams
from pipeline.heads.registry import StreamingContext, head_kind
from pipeline.heads.tally import correct_string
from pipeline.heads.variants import Variant
from pipeline.store.reader import open_feature_set


def streaming_head(variant: Variant, heads: HeadsParams, n_train: int):
    """The out-of-core estimator of a variant (its kind's registry entry), or ``None`` when it has none.

    PCA and augmented views have no out-of-core form here, whatever the kind.
    """
    kind = head_kind(variant.kind)
    if variant.pca is not None or variant.uses_views or kind.streaming is None:
        return None
    context = StreamingContext(
        n_train=n_train, epochs=heads.out_of_core_epochs, standardize=variant.standardize, seed=heads.seed
    )
    return kind.streaming(dict(variant.params), heads.grid(variant.kind), context)


def fit_out_of_core(features, variants, heads, records):
    """Fit every variant that has an out-of-core form, reading the store as dask arrays.

    Yields
    ------
    variant, estimator, row
        ``row`` as :func:`pipeline.heads.sweep.run_sweep` gives it (validation
        accuracy and macro-F1, fit seconds, ``out_of_core: true``).
    """
    from sklearn.metrics import accuracy_score, f1_score

    for pooling in sorted({v.pooling for v in variants}):
        train = open_feature_set(features, "train", manifest=records, pooling=pooling, as_dask=True)
        val = open_feature_set(features, "val", manifest=records, pooling=pooling, as_dask=True)
        for variant in (v for v in variants if v.pooling == pooling):
            estimator = streaming_head(variant, heads, len(train.y))
            if estimator is None:
                continue
            started = time.perf_counter()
            estimator.fit(train.X, train.y)
            seconds = time.perf_counter() - started
            predicted = estimator.predict(val.X) if len(val.y) else np.zeros(0, int)
            yield (
                variant,
                estimator,
                {
                    "val_accuracy": float(accuracy_score(val.y, predicted)) if len(val.y) else None,
                    "val_macro_f1": float(f1_score(val.y, predicted, average="macro", zero_division=0))
                    if len(val.y)
                    else None,
                    "val_accuracy_std": None,
                    "fit_seconds": round(seconds, 4),
                    "peak_rss_mib": None,
                    "features_memmapped": False,
                    "n_epochs": estimator.epochs,
                    "out_of_core": True,
                    "val_correct": correct_string(np.asarray(predicted) == np.asarray(val.y)),
                },
            )
