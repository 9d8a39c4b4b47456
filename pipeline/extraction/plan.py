"""Everything an extraction decides before the first image is read, and the backbone it builds once.

:func:`plan_extraction` resolves the runtime (:mod:`pipeline.extraction.runtime`),
builds the truncated backbone (:func:`pipeline.backbones.build_cut_model`) and
describes what it will produce: an :class:`ExtractionPlan` (feature shape,
dtype, rows per chunk, provenance) — small, frozen, picklable, what a Dask
worker sends back to the client — held by a :class:`Backbone` together with the
built model and its compiled steps, which stay in the process that built them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.runtime import Runtime, resolve_runtime
from pipeline.provenance import Provenance, library_versions
from pipeline.store.layout import rows_per_chunk

# The libraries whose versions shape the features, recorded in every store's provenance.
FEATURE_LIBRARIES = ("shoulders", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pillow", "zarr")


@dataclass(frozen=True)
class ExtractionPlan:
    """What one feature set's extraction produces, decided before any image is read."""

    runtime: Runtime
    dtype: str
    feature_shape: tuple[int, ...]
    chunk_rows: int
    provenance: Provenance


class Backbone:
    """A truncated backbone built for a plan, with its compiled inference steps (kept per process)."""

    def __init__(self, plan: ExtractionPlan, cut: Any):
        self.plan = plan
        self.cut = cut                      # pipeline.backbones.CutModel
        self._clean_step = None

    def step(self, augment_layers: Optional[list] = None):
        """The compiled inference step; the clean one is traced once and reused however many shards run."""
        from pipeline.extraction.runtimes.tensorflow_step import compile_inference

        if augment_layers is None and self._clean_step is not None:
            return self._clean_step
        step = compile_inference(self.cut.model, self.cut.preprocess, dtype=self.plan.dtype,
                                 jit_compile=self.plan.runtime.jit_compile, augment_layers=augment_layers)
        if augment_layers is None:
            self._clean_step = step
        return step


def plan_extraction(spec: FeatureSetParams, settings: ExtractParams, *, manifest_sha256: str) -> Backbone:
    """Build the truncated model once and describe what it will produce (provenance, chunking)."""
    from pipeline.backbones import build_cut_model

    runtime = resolve_runtime(settings)
    cut = build_cut_model(spec, seed=settings.seed, mixed_precision=runtime.mixed_precision)
    feature_shape = tuple(int(d) for d in cut.model.output_shape[1:])
    dtype = spec.dtype or settings.dtype
    chunk_rows = rows_per_chunk(feature_shape, np.dtype(dtype).itemsize, chunk_mb=settings.chunk_mb,
                                batch_size=runtime.batch_size)
    provenance = Provenance(
        **cut.provenance,
        dtype=dtype,
        compute="mixed_float16" if runtime.mixed_precision else "float32",
        jit_compile=runtime.jit_compile,
        resize="bilinear (tf.image.resize)",
        decoder="PIL via pipeline.images.decode_image",
        chunk_rows=chunk_rows,
        manifest_sha256=manifest_sha256,
        versions=library_versions(FEATURE_LIBRARIES),
    )
    plan = ExtractionPlan(runtime=runtime, dtype=dtype, feature_shape=feature_shape, chunk_rows=chunk_rows,
                          provenance=provenance)
    return Backbone(plan, cut)
