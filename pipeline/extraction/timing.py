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
import datetime
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.cache_dir import machine, read_record, write_record
from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.batch_size import seconds_per_batch
from pipeline.extraction.plan import plan_extraction
from pipeline.provenance import fingerprint

log = logging.getLogger(__name__)

# Rounds timed after the warm-up; the median is kept.
TIMED_BATCHES = 5


def cost_cache_file() -> Path:
    """``backbone-cost.json`` in the shoulders cache folder: one measurement per machine and backbone."""
    from pipeline.cache_dir import cache_dir

    return cache_dir() / "backbone-cost.json"


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
    return {
        "seconds_per_image": seconds / runtime.batch_size,
        "batch_size": runtime.batch_size,
        "input_size": size,
        "batches": batches,
        "runtime": runtime.name,
        "device": runtime.device,
    }


def time_feature_sets(
    features: Mapping[str, FeatureSetParams], settings: ExtractParams, *, cached: bool = True
) -> dict[str, dict]:
    """:func:`time_backbone` for every feature set, once per distinct backbone × cut × size × alpha.

    A timing is taken once per machine (the CPU model and usable cores) and
    backbone settings, and kept in :func:`cost_cache_file`: one measured on a
    busy spell was 10× another, and the cost report swung with it from run to
    run. Each entry says when it was measured (``measured_at``, UTC) and
    whether this run measured it (``cached``); delete the file, or pass
    ``cached=False``, to measure again.
    """
    entries = _read_cost_cache() if cached else {}
    measured: dict[tuple, dict] = {}
    out = {}
    for key, spec in features.items():
        same = (spec.backbone, spec.cut, spec.size, spec.alpha)
        if same not in measured:
            entry_key = fingerprint({**machine(), **_cost_key(spec, settings)}, length=20)
            if entry_key in entries:
                measured[same] = {**entries[entry_key]["timing"], "cached": True}
            else:
                timing = {
                    **time_backbone(spec, settings),
                    "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                }
                entries[entry_key] = {"timing": timing, "key": _cost_key(spec, settings), "machine": machine()}
                measured[same] = {**timing, "cached": False}
            log.info(
                "%s: %s cut %r: %.4f s per image (%s, batch %d; %s %s)",
                key,
                spec.backbone,
                spec.cut,
                measured[same]["seconds_per_image"],
                measured[same]["runtime"],
                measured[same]["batch_size"],
                "measured on this machine" if measured[same]["cached"] else "measured now, at",
                measured[same]["measured_at"],
            )
        out[key] = {"backbone": spec.backbone, "cut": spec.cut, **measured[same]}
    if cached:
        _write_cost_cache(entries)
    return out


def _cost_key(spec: FeatureSetParams, settings: ExtractParams) -> dict:
    """What a timing depends on besides the machine (the weights do not: it is timed with ``weights: none``)."""
    return {
        "backbone": spec.backbone,
        "cut": spec.cut,
        "size": spec.size,
        "alpha": spec.alpha,
        "runtime": settings.runtime,
        "precision": settings.precision,
        "batch_size": settings.batch_size,
        "jit_compile": settings.jit_compile,
    }


def _read_cost_cache() -> dict:
    return read_record(cost_cache_file())


def _write_cost_cache(entries: dict) -> None:
    write_record(cost_cache_file(), entries, what="the backbone timings")


def cached_timing(spec: FeatureSetParams, settings: ExtractParams) -> dict | None:
    """This machine's kept timing of ``spec``'s backbone (:func:`time_feature_sets`), or None: nothing is measured."""
    entry = _read_cost_cache().get(fingerprint({**machine(), **_cost_key(spec, settings)}, length=20))
    return None if entry is None else entry["timing"]
