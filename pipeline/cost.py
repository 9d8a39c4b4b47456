"""Stage backbone_cost: time each feature set's frozen backbone per image, for the sweep's cost report.

Reads  ``params.yaml`` sections ``features`` and ``extract`` (``batch_size``, ``seed``).
Writes ``--out`` (``reports/backbone_cost.json``): per feature set, the seconds
       one image takes through the truncated backbone (``seconds_per_image``),
       with the batch size, input size and device it was measured with.

The evaluate stage multiplies it out (:func:`end_to_end_seconds`) to say what
the sweep's variants would have cost had each run the backbone end to end
instead of reading cached features.

What is measured: the forward pass of the cut model (its preprocessing
included) on a batch of random 0–255 images at its input size, the median
of a few batches after one warm-up batch that traces the function. The
backbone is built with ``weights: none``: the same layers and arithmetic as with
trained weights, without reading a weights file. Image decoding and resizing
are left out, so an end-to-end estimate built on it is a lower bound.

Usage: ``python -m pipeline.cost --out reports/backbone_cost.json``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.config import ExtractParams, FeatureSetParams, load_params
from pipeline.stage import run_stage

log = logging.getLogger(__name__)

# Batches timed after the warm-up; the median is kept.
TIMED_BATCHES = 3
# extract.batch_size "auto" on a CPU (the extract stage's own choice there).
_AUTO_BATCH_CPU = 32


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
    batch_size = _AUTO_BATCH_CPU if settings.batch_size == "auto" else settings.batch_size
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


def end_to_end_seconds(rows: Sequence[dict], *, seconds_per_image: float, n_train: int, n_val: int,
                       cv: int = 0) -> float:
    """What a feature set's variants would cost if each ran the backbone on every image it reads.

    Per variant: one pass over the training images per epoch it trained (the
    epochs a dense head actually ran; 1 for the other heads, which need each
    image's features once) plus one pass over the validation images to score
    it. With ``cv = k`` the k fold fits and the final refit read, over the
    N = train + val images, ``epochs × k × N + N`` images in all.

    Parameters
    ----------
    rows : sequence of dict
        Score rows of ``heads/<key>/scores.json`` (``n_epochs`` is read).
    seconds_per_image : float
    n_train, n_val : int
        Images in the train and val splits.

    Returns
    -------
    float
        Seconds.
    """
    images = 0
    for row in rows:
        epochs = row.get("n_epochs") or 1
        images += epochs * cv * (n_train + n_val) + n_train + n_val if cv else epochs * n_train + n_val
    return images * seconds_per_image


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file, e.g. reports/backbone_cost.json")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    timings = time_feature_sets(params.features, params.extract)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
