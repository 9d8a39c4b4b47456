"""Everything an extraction decides before the first image is read, and the backbone it builds once.

:func:`planned_identity` says what the features of a feature set will be
keyed by (:func:`pipeline.provenance.identity_of`) from params and the check
stage's resolved cut alone — no TensorFlow — so a stage can tell that a store
already holds every row it needs and stop there. :func:`plan_extraction`
resolves the runtime (:mod:`pipeline.extraction.runtime`), builds the truncated
backbone (:func:`pipeline.backbones.build_cut_model`) and describes what it
produces: an :class:`ExtractionPlan` (feature shape, dtype, rows per chunk,
provenance, what this run is: device, batch size, versions) — small, frozen,
picklable, what a Dask worker sends back to the client — held by a
:class:`Backbone` with the built model and its compiled steps, which stay in the
process that built them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from pipeline.backbones.registry import Resize
from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.runtime import Runtime, resolve_runtime
from pipeline.provenance import Provenance, identity_of, library_versions
from pipeline.store.layout import rows_per_chunk

# The libraries whose versions shape the features, recorded with every run.
FEATURE_LIBRARIES = ("shoulders", "tensorflow-cpu", "tensorflow", "keras", "keras-hub", "numpy", "pillow", "zarr")
DECODER = "PIL via pipeline.images.decode_image"


def augment_identity(settings: ExtractParams) -> dict:
    """What a views store's views depend on besides the backbone: the ops and the seed."""
    return {"ops": dict(settings.augment.ops), "seed": settings.augment.seed}


def planned_identity(spec: FeatureSetParams, settings: ExtractParams, cut: str, *,
                     views: bool = False) -> Optional[dict]:
    """The identity the features of ``spec`` will have, from params and the resolved ``cut`` alone.

    Returns ``None`` when it depends on the device (float32 storage with
    ``extract.mixed_precision: auto``), or on files keras_hub has to fetch (a
    preset given by name): then only building the backbone tells.
    """
    from pipeline.backbones import network_identity

    network = network_identity(spec)
    if network is None:
        return None
    dtype = spec.dtype or settings.dtype
    provenance = {"backbone": spec.backbone, "weights": spec.weights, "cut": cut, "alpha": spec.alpha,
                  "seed": settings.seed if spec.weights == "none" else None, "decoder": DECODER,
                  "dtype": dtype, "augment": augment_identity(settings) if views else None, **network}
    if dtype == "float32":
        if settings.mixed_precision == "auto":
            return None
        provenance["compute"] = "mixed_float16" if settings.mixed_precision else "float32"
    return identity_of(provenance)


@dataclass(frozen=True)
class ExtractionPlan:
    """What one feature set's extraction produces, decided before any image is read."""

    runtime: Runtime
    dtype: str
    feature_shape: tuple[int, ...]
    chunk_rows: int
    provenance: Provenance
    resize: Resize = Resize()       # how images are resized to the backbone's input

    @property
    def identity(self) -> dict:
        return identity_of(self.provenance.to_json())

    def run_record(self) -> dict:
        """What this run is, for the store's log of runs (not part of the identity)."""
        return {"runtime": "tensorflow", "device": self.runtime.device, "batch_size": self.runtime.batch_size,
                "jit_compile": self.runtime.jit_compile, "compute": self.provenance.compute,
                "versions": library_versions(FEATURE_LIBRARIES)}

    def with_views(self, settings: ExtractParams) -> "ExtractionPlan":
        """The plan of the same backbone's augmented views."""
        return dataclasses.replace(self, provenance=dataclasses.replace(self.provenance,
                                                                         augment=augment_identity(settings)))


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


def plan_extraction(spec: FeatureSetParams, settings: ExtractParams, *,
                    expected: Optional[Mapping[str, Any]] = None) -> Backbone:
    """Build the truncated model once and describe what it will produce (provenance, chunking).

    Parameters
    ----------
    expected : mapping, optional
        The :func:`planned_identity`; the built backbone must have it (else the
        identity rule itself is wrong, which is a bug).
    """
    from pipeline.backbones import build_cut_model

    runtime = resolve_runtime(settings)
    cut = build_cut_model(spec, seed=settings.seed, mixed_precision=runtime.mixed_precision)
    feature_shape = tuple(int(d) for d in cut.model.output_shape[1:])
    dtype = spec.dtype or settings.dtype
    chunk_rows = rows_per_chunk(feature_shape, np.dtype(dtype).itemsize, chunk_mb=settings.chunk_mb,
                                batch_size=runtime.batch_size)
    provenance = Provenance(**cut.provenance, dtype=dtype,
                            compute="mixed_float16" if runtime.mixed_precision else "float32", decoder=DECODER)
    plan = ExtractionPlan(runtime=runtime, dtype=dtype, feature_shape=feature_shape, chunk_rows=chunk_rows,
                          provenance=provenance, resize=cut.resize)
    check_planned(plan, expected)
    return Backbone(plan, cut)


def check_planned(plan: ExtractionPlan, expected: Optional[Mapping[str, Any]]) -> None:
    """Refuse a built backbone whose identity is not the planned one (the planning rule would be wrong: a bug)."""
    if expected is None:
        return
    clean = {k: v for k, v in expected.items() if k != "augment"}
    if clean != {k: v for k, v in plan.identity.items() if k != "augment"}:
        raise RuntimeError(f"the built backbone's identity {plan.identity} differs from the planned {clean}")
