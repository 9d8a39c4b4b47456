"""Timing a feature set's frozen backbone per image, for the sweep's cost report (stage backbone_cost).

What is measured: the runtime's compiled step (:mod:`pipeline.extraction.runtimes`)
— the cut model, its preprocessing included — on a batch of random 0–255 images
at its input size and at the batch size extraction itself uses (resolved, or
measured, by :func:`pipeline.extraction.plan.plan_extraction`), streamed as
extraction streams batches (several in flight where the runtime keeps several:
:func:`pipeline.extraction.batch_size.seconds_per_batch`), the median of a few
rounds after a warm-up round. The backbone is built with
``weights: none``: the same layers and arithmetic as with trained weights,
without reading a weights file. Image decoding and resizing are left out, so an
end-to-end estimate built on it is a lower bound.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import numpy as np

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.batch_size import seconds_per_batch
from pipeline.extraction.plan import plan_extraction

log = logging.getLogger(__name__)

# Rounds timed after the warm-up; the median is kept.
TIMED_BATCHES = 3


def time_backbone(spec: FeatureSetParams, settings: ExtractParams, *, batches: int = TIMED_BATCHES) -> dict:
    """Seconds per image through one feature set's truncated backbone (see the module docstring).

    Returns
    -------
    dict
        ``seconds_per_image``, ``batch_size``, ``input_size``, ``batches``, ``runtime``, ``device``.
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1. Received: batches={batches}")
    backbone = plan_extraction(dataclasses.replace(spec, weights="none"), settings)
    runtime, size = backbone.plan.runtime, backbone.plan.provenance.input_size
    step = backbone.step()
    images = np.random.default_rng(settings.seed).integers(0, 256, (runtime.batch_size, size, size, 3))
    images = images.astype(np.float32)
    seconds = seconds_per_batch(step, images, rounds=batches)
    return {"seconds_per_image": seconds / runtime.batch_size, "batch_size": runtime.batch_size,
            "input_size": size, "batches": batches, "runtime": runtime.name, "device": runtime.device}


def time_feature_sets(features: Mapping[str, FeatureSetParams], settings: ExtractParams) -> dict[str, dict]:
    """:func:`time_backbone` for every feature set, once per distinct backbone × cut × size × alpha."""
    measured: dict[tuple, dict] = {}
    out = {}
    for key, spec in features.items():
        same = (spec.backbone, spec.cut, spec.size, spec.alpha)
        if same not in measured:
            measured[same] = time_backbone(spec, settings)
            log.info("%s: %s cut %r: %.4f s per image (%s, batch %d)", key, spec.backbone, spec.cut,
                     measured[same]["seconds_per_image"], measured[same]["runtime"], measured[same]["batch_size"])
        out[key] = {"backbone": spec.backbone, "cut": spec.cut, **measured[same]}
    return out
