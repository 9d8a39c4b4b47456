"""Timing a feature set's frozen backbone per image, for the sweep's cost report (stage backbone_cost).

What is measured: the forward pass of the cut model (its preprocessing
included) on a batch of random 0–255 images at its input size, the median of a
few batches after one warm-up batch that traces the function, at the batch
size extraction itself uses (:func:`pipeline.extraction.runtime.resolve_runtime`).
The backbone is built with ``weights: none``: the same layers and arithmetic as
with trained weights, without reading a weights file. Image decoding and
resizing are left out, so an end-to-end estimate built on it is a lower bound.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from typing import Mapping

import numpy as np

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.runtime import resolve_runtime

log = logging.getLogger(__name__)

# Batches timed after the warm-up; the median is kept.
TIMED_BATCHES = 3


def time_backbone(spec: FeatureSetParams, *, batch_size: int, seed: int = 0,
                  batches: int = TIMED_BATCHES) -> dict:
    """Seconds per image through one feature set's truncated backbone (see the module docstring).

    Parameters
    ----------
    spec : FeatureSetParams
        Backbone, cut, input size, alpha; the weights are replaced by random ones.
    batch_size : int
        Images per forward pass.
    batches : int
        Timed batches (after one warm-up).

    Returns
    -------
    dict
        ``seconds_per_image``, ``batch_size``, ``input_size``, ``batches``, ``device``.
    """
    import tensorflow as tf

    from pipeline.backbones import build_cut_model

    if batch_size < 1 or batches < 1:
        raise ValueError(f"batch_size and batches must be >= 1. Received: batch_size={batch_size}, "
                         f"batches={batches}")
    cut = build_cut_model(dataclasses.replace(spec, weights="none"), seed=seed)
    size = int(cut.provenance["input_size"])
    images = tf.constant(np.random.default_rng(seed).integers(0, 256, (batch_size, size, size, 3)), tf.float32)

    @tf.function
    def forward(batch):
        return cut.model(cut.preprocess(batch), training=False)

    forward(images).numpy()
    timings = []
    for _ in range(batches):
        started = time.perf_counter()
        forward(images).numpy()
        timings.append(time.perf_counter() - started)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    return {"seconds_per_image": statistics.median(timings) / batch_size, "batch_size": batch_size,
            "input_size": size, "batches": batches, "device": device}


def time_feature_sets(features: Mapping[str, FeatureSetParams], settings: ExtractParams) -> dict[str, dict]:
    """:func:`time_backbone` for every feature set, once per distinct backbone × cut × size × alpha."""
    batch_size = resolve_runtime(settings).batch_size
    measured: dict[tuple, dict] = {}
    out = {}
    for key, spec in features.items():
        same = (spec.backbone, spec.cut, spec.size, spec.alpha)
        if same not in measured:
            measured[same] = time_backbone(spec, batch_size=batch_size, seed=settings.seed)
            log.info("%s: %s cut %r: %.4f s per image (batch %d)", key, spec.backbone, spec.cut,
                     measured[same]["seconds_per_image"], batch_size)
        out[key] = {"backbone": spec.backbone, "cut": spec.cut, **measured[same]}
    return out
