"""Everything an extraction decides before the first image is read, and the backbone it builds once.

:func:`planned_identity` says what the features of a feature set will be
keyed by (:func:`pipeline.provenance.identity_of`) from params and the check
stage's resolved cut alone — no TensorFlow — so a stage can tell that a store
already holds every row it needs and stop there. :func:`plan_extraction`
resolves the runtime (:mod:`pipeline.extraction.runtime_choice`), builds the truncated
backbone (:func:`pipeline.backbones.build_cut_model`) and describes what it
produces: an :class:`ExtractionPlan` (feature shape, dtype, rows per chunk,
provenance, what this run is: device, batch size, versions) — small, frozen,
picklable, what a Dask worker sends back to the client — held by a
:class:`Backbone` with the built model and its compiled steps, which stay in the
process that built them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.backbones.registry import Resize
from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction import network_cache
from pipeline.extraction.runtime_choice import COMPUTE, Runtime, resolve_runtime, use_keras_backend
from pipeline.extraction.runtimes import compile_step
from pipeline.provenance import Provenance, identity_of, library_versions
from pipeline.store.layout import rows_per_chunk

# The libraries whose versions shape the features, recorded with every run.
FEATURE_LIBRARIES = (
    "shoulders",
    "tensorflow-cpu",
    "tensorflow",
    "openvino",
    "jax",
    "jaxlib",
    "keras",
    "keras-hub",
    "numpy",
    "pillow",
    "simplejpeg",
    "scipy",
    "zarr",
)
# The pixel contract, part of a store's identity. Most JPEGs are decoded by libjpeg-turbo through simplejpeg
# rather than PIL (faster, the same pixels to the bit: tests/test_images.py), so the text and the caches made
# before that change stand; the versions recorded with every run name both libraries.
DECODER = "PIL via pipeline.images.decode_image; JPEG draft when the shorter side is >= 2x the input size"
# Keras dtype policy of each compute precision (OpenVINO builds in float32 and takes a precision hint instead).
POLICY = {"float32": None, "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def augment_identity(settings: ExtractParams) -> dict:
    """What a views store's views depend on besides the backbone: the ops and the seed."""
    return {"ops": dict(settings.augment.ops), "seed": settings.augment.seed}


def planned_identity(spec: FeatureSetParams, settings: ExtractParams, cut: str, *, views: bool = False) -> dict | None:
    """The identity the features of ``spec`` will have, from params and the resolved ``cut`` alone.

    Returns ``None`` when it depends on the device (float32 storage with
    ``extract.precision: auto``): then only resolving the runtime tells; or
    on files keras_hub has to fetch (a preset given by name): then only
    building the backbone tells.
    """
    from pipeline.backbones import network_identity
    from pipeline.backbones.random_init import SCHEME as RANDOM_INIT

    network = network_identity(spec)
    if network is None:
        return None
    dtype = spec.dtype or settings.dtype
    provenance = {
        "backbone": spec.backbone,
        "weights": spec.weights,
        "cut": cut,
        "alpha": spec.alpha,
        "seed": settings.seed if spec.weights == "none" else None,
        "init": RANDOM_INIT if spec.weights == "none" else None,
        "decoder": DECODER,
        "dtype": dtype,
        "augment": augment_identity(settings) if views else None,
        "flip": None if spec.flip == "none" else spec.flip,
        **network,
    }
    if settings.precision == "auto":
        if dtype == "float32":
            return None
        provenance["compute"] = "float32"  # or mixed_float16 on a GPU: the same identity for float16 storage
    else:
        provenance["compute"] = COMPUTE[settings.precision]
    return identity_of(provenance)


@dataclass(frozen=True)
class ExtractionPlan:
    """What one feature set's extraction produces, decided before any image is read."""

    runtime: Runtime
    dtype: str
    feature_shape: tuple[int, ...]
    chunk_rows: int
    provenance: Provenance
    resize: Resize = Resize()  # how images are resized to the backbone's input

    @property
    def identity(self) -> dict:
        return identity_of(self.provenance.to_json())

    def run_record(self) -> dict:
        """What this run is, for the store's log of runs (not part of the identity)."""
        return {
            "runtime": self.runtime.name,
            "device": self.runtime.device,
            "batch_size": self.runtime.batch_size,
            "jit_compile": self.runtime.jit_compile,
            "compute": self.provenance.compute,
            "precision": self.runtime.precision,
            "versions": library_versions(FEATURE_LIBRARIES),
        }

    def with_views(self, settings: ExtractParams) -> ExtractionPlan:
        """The plan of the same backbone's augmented views."""
        return dataclasses.replace(
            self, provenance=dataclasses.replace(self.provenance, augment=augment_identity(settings))
        )


class Backbone:
    """A truncated backbone built for a plan, with its compiled inference step (kept per process).

    ``cut`` is the built :class:`~pipeline.backbones.CutModel`, or None when the
    network came converted from :mod:`pipeline.extraction.network_cache`
    (``cached``: nothing was built). With ``cache_key`` set, the OpenVINO
    network the step converts is stored under that key.
    """

    def __init__(
        self,
        plan: ExtractionPlan,
        cut: Any,
        step: Callable | None = None,
        *,
        cached: network_cache.Entry | None = None,
        cache_key: str | None = None,
    ):
        self.plan = plan
        self.cut = cut  # pipeline.backbones.CutModel, or None (cached)
        self.cached = cached
        self._step = step
        self._cache_key = cache_key

    def step(self) -> Callable:
        """The compiled inference step for batches of the plan's size (compiled once, reused for every shard)."""
        if self._step is None:
            if self.cached is not None:
                from pipeline.extraction.runtimes.openvino_runtime import compile_network

                self._step = compile_network(
                    self.cached.network, runtime=self.plan.runtime, outputs=self.cached.outputs
                )
            else:
                self._step = compile_step(
                    self.plan.runtime, self.cut.model, self.cut.preprocess, batch_size=self.plan.runtime.batch_size
                )
        if self._cache_key is not None and getattr(self._step, "network", None) is not None:
            network_cache.save(
                self._cache_key,
                self._step.network,
                provenance=self.cut.provenance,
                feature_shape=self.plan.feature_shape,
                resize=self.cut.resize,
                outputs=len(self.cut.model.outputs),
                identity=self.plan.identity,
            )
            self._cache_key = None
        return self._step


def _network_of(described: Mapping[str, Any]) -> dict:
    """What a batch size's speed depends on in a network: its architecture up to the cut, not its weights."""
    return {k: described.get(k) for k in ("backbone", "cut", "alpha", "input_size", "architecture", "blocks")}


def plan_extraction(
    spec: FeatureSetParams, settings: ExtractParams, *, expected: Mapping[str, Any] | None = None
) -> Backbone:
    """Resolve the runtime, build the truncated model once and describe what it will produce.

    An OpenVINO network converted before for the same identity and batch size
    is read from :mod:`pipeline.extraction.network_cache` instead: nothing is
    built and neither TensorFlow nor Keras is imported.

    Parameters
    ----------
    expected : mapping, optional
        The :func:`planned_identity`; the built backbone must have it (else the
        identity rule itself is wrong, which is a bug). Without it nothing is
        read from the network cache.
    """
    from pipeline.extraction.batch_size import cached_batch_size, measured_batch_size

    runtime = resolve_runtime(settings)
    backend = use_keras_backend(runtime)
    batch_key = {
        "runtime": runtime.name,
        "keras_backend": backend,
        "precision": runtime.precision,
        "network": _network_of(expected) if expected else None,
        "versions": library_versions(FEATURE_LIBRARIES),
        "timing": "streamed",
    }  # how it was timed (batch_size.seconds_per_batch): older choices are remeasured
    caching = runtime.name == "openvino" and network_cache.cacheable(expected)
    if caching:
        batch = runtime.batch_size or cached_batch_size(batch_key)
        entry = (
            None
            if batch is None
            else network_cache.lookup(network_cache.entry_key(expected, batch_size=batch, keras_backend=backend))
        )
        if entry is not None:
            runtime = dataclasses.replace(runtime, batch_size=batch)
            plan = _plan(
                spec, settings, runtime, network_cache.provenance_for(entry, spec), entry.feature_shape, entry.resize
            )
            check_planned(plan, expected)
            return Backbone(plan, None, cached=entry)
    cut = _build(spec, settings, runtime)
    step = None
    if runtime.batch_size is None:
        # The Keras backend too: OpenVINO's graph differs (and so does its best batch) by the backend it came from.
        key = batch_key if expected else {**batch_key, "network": _network_of(cut.provenance)}
        batch, step = measured_batch_size(
            lambda b: compile_step(runtime, cut.model, cut.preprocess, batch_size=b), cut.provenance["input_size"], key
        )
        runtime = dataclasses.replace(runtime, batch_size=batch)
    feature_shape = tuple(int(d) for d in cut.model.output_shape[1:])
    plan = _plan(spec, settings, runtime, cut.provenance, feature_shape, cut.resize)
    check_planned(plan, expected)
    cache_key = (
        network_cache.entry_key(expected, batch_size=runtime.batch_size, keras_backend=backend) if caching else None
    )
    return Backbone(plan, cut, step, cache_key=cache_key)


def _build(spec: FeatureSetParams, settings: ExtractParams, runtime: Runtime):
    from pipeline.backbones import build_cut_model

    policy = None if runtime.name == "openvino" else POLICY[runtime.precision]
    return build_cut_model(spec, seed=settings.seed, policy=policy)


def _plan(
    spec: FeatureSetParams,
    settings: ExtractParams,
    runtime: Runtime,
    network: Mapping[str, Any],
    feature_shape: tuple[int, ...],
    resize: Resize,
) -> ExtractionPlan:
    dtype = spec.dtype or settings.dtype
    chunk_rows = rows_per_chunk(
        feature_shape, np.dtype(dtype).itemsize, chunk_mb=settings.chunk_mb, batch_size=runtime.batch_size
    )
    provenance = Provenance(**network, dtype=dtype, compute=runtime.compute, decoder=DECODER)
    return ExtractionPlan(
        runtime=runtime,
        dtype=dtype,
        feature_shape=feature_shape,
        chunk_rows=chunk_rows,
        provenance=provenance,
        resize=resize,
    )


def check_planned(plan: ExtractionPlan, expected: Mapping[str, Any] | None) -> None:
    """Refuse a built backbone whose identity is not the planned one (the planning rule would be wrong: a bug)."""
    if expected is None:
        return
    clean = {k: v for k, v in expected.items() if k != "augment"}
    if clean != {k: v for k, v in plan.identity.items() if k != "augment"}:
        raise RuntimeError(f"the built backbone's identity {plan.identity} differs from the planned {clean}")
