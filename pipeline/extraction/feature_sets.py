"""One feature set in this process: rows for the images its store lacks, or their augmented views.

:func:`extract_feature_set` plans the extraction, opens the feature set's store
(:class:`pipeline.store.writer.StoreWriter`: in place when its identity
matches, else a new one), computes rows for the images that have none — every
other row is reused as it is — and finalises the store.
:func:`augment_feature_set` does the same for K seeded augmented views of the
images that need views (training images; val and test too for test-time
augmentation), adding new views to old rows as K grows.
:mod:`pipeline.extraction.distributed` does the first on a Dask cluster,
sharing :func:`open_store_writer`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.plan import Backbone, ExtractionPlan, plan_extraction
from pipeline.extraction.runner import run_jobs
from pipeline.extraction.runtime import Runtime
from pipeline.store.layout import store_name
from pipeline.store.locations import Location
from pipeline.store.writer import StoreWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What one extraction did: for its report (``reports/extract/<key>.json``), logs and benchmarks."""

    path: Location
    images: int                # distinct images wanted
    reused: int                # of those, already in the store
    computed: int              # rows (or, for views, image × view passes) computed by this run
    rows: int                  # rows in the store now
    seconds: float             # the whole extraction
    build_seconds: float       # building the truncated model
    extract_seconds: float     # decode → inference → write, overlapped
    first_batch_seconds: Optional[float]  # of extract_seconds, until the first batch's features (tracing)
    finalize_seconds: float    # reading written chunks back, recording digests
    runtime: Optional[Runtime]  # None when nothing was computed (no backbone was built)

    def report(self) -> dict:
        """The accounting written to ``reports/extract/<key>.json`` (a DVC metrics file)."""
        speed = self.computed / self.extract_seconds if self.computed and self.extract_seconds else None
        steady = None
        if speed is not None and self.first_batch_seconds is not None and self.runtime is not None:
            after = self.extract_seconds - self.first_batch_seconds
            rest = self.computed - min(self.computed, self.runtime.batch_size or 0)
            steady = rest / after if rest and after > 0 else None
        return {"images": self.images, "reused": self.reused, "computed": self.computed, "rows": self.rows,
                "seconds": round(self.seconds, 3),
                "images_per_second": None if speed is None else round(speed, 2),
                # after the first batch: start-up (tracing, compilation) excluded
                "steady_images_per_second": None if steady is None else round(steady, 2),
                "build_seconds": round(self.build_seconds, 3),
                "runtime": None if self.runtime is None else self.runtime.name,
                "device": None if self.runtime is None else self.runtime.device,
                "precision": None if self.runtime is None else self.runtime.precision,
                "batch_size": None if self.runtime is None else self.runtime.batch_size}

    def summary(self, name: str) -> str:
        """The one line an extraction logs."""
        report = self.report()
        speed = report["images_per_second"]
        return (f"{name}: {self.images} images, {self.reused} reused, {self.computed} computed in "
                f"{self.seconds:.1f} s" + (f" ({speed:.1f} images/s)" if speed else "") + f"; {self.rows} rows")


def nothing_to_do(path: Location, images: int, rows: int, started: float) -> ExtractResult:
    """The result of an extraction that found every row already there (no backbone built)."""
    return ExtractResult(path=path, images=images, reused=images, computed=0, rows=rows,
                         seconds=time.perf_counter() - started, build_seconds=0.0, extract_seconds=0.0,
                         first_batch_seconds=None, finalize_seconds=0.0, runtime=None)


def open_store_writer(plan: ExtractionPlan, out: Location, *, views: Optional[int] = None) -> StoreWriter:
    """The writer of ``plan``'s store at ``out`` (a views store with ``views``)."""
    return StoreWriter(out, plan.identity, plan.provenance.to_json(), feature_shape=plan.feature_shape,
                       dtype=plan.dtype, chunk_rows=plan.chunk_rows, views=views)


def log_plan(plan: ExtractionPlan, name: str, spec: FeatureSetParams, counts: Mapping[str, int]) -> None:
    """Log the input and output shapes of a backbone pass, and what it will compute, once."""
    p = plan.provenance
    log.info("%s: %s (%s) cut at %r (layer %d of %d), input %dx%d → %s %s; %s, batch %d, %d rows per chunk",
             name, spec.backbone, spec.weights, p.cut, p.cut_index, p.n_layers, p.input_size, p.input_size,
             plan.feature_shape, plan.dtype, plan.runtime.device, plan.runtime.batch_size, plan.chunk_rows)
    log.info("%s: %d images, %d with rows already, %d to compute", name, counts["images"], counts["reused"],
             counts["computed"])


def extract_feature_set(spec: FeatureSetParams, settings: ExtractParams, wanted: Sequence[str],
                        paths: Mapping[str, str], *, out: Location, progress: bool = True,
                        expected: Optional[Mapping] = None) -> ExtractResult:
    """Add rows for the images of ``wanted`` that the feature set's store lacks, resuming an interrupted run.

    Parameters
    ----------
    spec : FeatureSetParams
        Backbone, weights, cut, size (and an optional dtype override).
    settings : ExtractParams
        Batch size, dtype, chunk size, seed, XLA and mixed precision.
    wanted : sequence of str
        The content hashes of the images to have rows for.
    paths : mapping of sha256 to path
        Where each image's bytes are (checked against the hash as they are read).
    out : Location
        The store (or fsspec URL).
    expected : mapping, optional
        The planned identity (:func:`pipeline.extraction.plan.planned_identity`).

    Returns
    -------
    ExtractResult
    """
    started = time.perf_counter()
    backbone = plan_extraction(spec, settings, expected=expected)
    plan = backbone.plan
    with open_store_writer(plan, out) as writer:
        writes, counts = writer.plan(wanted)
        built = time.perf_counter()
        name = f"extract {store_name(out)}"
        log_plan(plan, name, spec, counts)
        run = run_jobs(backbone, writes, writer.row_hashes(), paths, writer.write, name=name, progress=progress)
        extracted = time.perf_counter()
        writer.finalize(plan.run_record())
    finished = time.perf_counter()
    return ExtractResult(path=writer.final_path, images=counts["images"], reused=counts["reused"],
                         computed=counts["computed"], rows=writer.rows, seconds=finished - started,
                         build_seconds=built - started, extract_seconds=extracted - built,
                         first_batch_seconds=run.first_batch_seconds, finalize_seconds=finished - extracted,
                         runtime=plan.runtime)


def augment_feature_set(spec: FeatureSetParams, settings: ExtractParams, wanted: Sequence[str],
                        paths: Mapping[str, str], *, out: Location, progress: bool = True,
                        expected: Optional[Mapping] = None) -> ExtractResult:
    """Compute the missing augmented views of the images of ``wanted``.

    Parameters
    ----------
    spec : FeatureSetParams
    settings : ExtractParams
        Its ``augment`` section says how many views (K), which ops, which seed.
    wanted : sequence of str
        The images that get views.
    paths, out, expected
        As :func:`extract_feature_set`; ``out`` is the views store.

    Returns
    -------
    ExtractResult
        ``computed`` counts image × view passes.
    """
    augment = settings.augment
    started = time.perf_counter()
    backbone: Backbone = plan_extraction(spec, settings, expected=expected)
    plan = backbone.plan.with_views(settings)
    with open_store_writer(plan, out, views=augment.views) as writer:
        writes, counts = writer.plan(wanted)
        built = time.perf_counter()
        name = f"augment {store_name(out)}"
        if writes:
            log_plan(plan, name, spec, counts)
            log.info("%s: %d views (ops %s, seed %d): %d image passes to compute", name, augment.views,
                     dict(augment.ops), augment.seed, sum(len(w.rows) for w in writes))
        run = run_jobs(backbone, writes, writer.row_hashes(), paths, writer.write, name=name, progress=progress,
                       augment=(dict(augment.ops), augment.seed))
        extracted = time.perf_counter()
        writer.finalize(plan.run_record())
    finished = time.perf_counter()
    return ExtractResult(path=writer.final_path, images=counts["images"], reused=counts["reused"],
                         computed=run.rows, rows=writer.rows, seconds=finished - started,
                         build_seconds=built - started, extract_seconds=extracted - built,
                         first_batch_seconds=run.first_batch_seconds, finalize_seconds=finished - extracted,
                         runtime=plan.runtime)
