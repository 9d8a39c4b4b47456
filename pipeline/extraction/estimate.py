"""How long an extraction should take on this machine, said before it starts (the extract stage's line).

From the last extraction of the same backbone pass on this machine
(:mod:`pipeline.estimates`, which keeps each run's seconds per image); the
first time, from the backbone's timing that the backbone_cost stage kept for
this machine (:func:`pipeline.extraction.timing.cached_timing`), a lower bound
since decoding is left out of it; else there is no estimate yet.
"""

from __future__ import annotations

import dataclasses

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.estimates import duration, estimate_line, record, seconds_per_unit
from pipeline.extraction.timing import cached_timing

JOB = "extract"


def extraction_key(spec: FeatureSetParams, settings: ExtractParams) -> dict:
    """What the speed of an extraction depends on besides the machine: its backbone pass (not its weights)."""
    network = {name: value for name, value in dataclasses.asdict(spec).items() if name != "weights"}
    runtime = {name: getattr(settings, name) for name in ("runtime", "precision", "batch_size", "jit_compile", "dtype")}
    return {**network, **runtime}


def extraction_estimate(spec: FeatureSetParams, settings: ExtractParams, *, images: int, name: str) -> str:
    """The line logged before ``images`` images go through ``spec``'s backbone (``name``: the store's)."""
    work = f"{name}: {images} images to compute"
    key = extraction_key(spec, settings)
    timing = cached_timing(spec, settings) if seconds_per_unit(JOB, key, images) is None else None
    if timing is not None:
        return (
            f"{work}: at least {duration(timing['seconds_per_image'] * images)} on this machine (from the "
            f"backbone alone, {timing['seconds_per_image'] * 1000:.3g} ms per image as backbone_cost timed it here; "
            "decoding not included)"
        )
    return estimate_line(JOB, key, units=images, work=work, unit="image")


def record_extraction(spec: FeatureSetParams, settings: ExtractParams, *, images: int, seconds: float) -> None:
    """Keep this extraction's seconds per image (start-up included) for the next estimate."""
    record(JOB, extraction_key(spec, settings), units=images, seconds=seconds)
