"""One feature set in this process: its clean features into a store, or its augmented views.

:func:`extract_feature_set` plans the extraction, creates or resumes the
partial store (:class:`pipeline.store.writer.FeatureWriter`), computes the
chunks not yet written and finalises the store; :mod:`pipeline.extraction.distributed`
does the same on a Dask cluster, sharing :func:`open_writer` and
:func:`pending_jobs` with it.
:func:`augment_feature_set` does the same for K seeded augmented views of the
training images (and of val/test for test-time augmentation), growing the
views store in place.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from pipeline.config import SPLITS, ExtractParams, FeatureSetParams
from pipeline.extraction.plan import Backbone, ExtractionPlan, plan_extraction
from pipeline.extraction.runner import ChunkJob, run_jobs
from pipeline.extraction.runtime import Runtime
from pipeline.manifest import Record, class_names
from pipeline.store.layout import store_name
from pipeline.store.locations import Location
from pipeline.store.writer import FeatureWriter, SplitRows, ViewWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What one extraction did, for logs and benchmarks."""

    path: Location
    rows: int                  # rows in the store
    computed: int              # rows computed by this run (fewer when resumed)
    build_seconds: float       # building the truncated model
    extract_seconds: float     # decode → inference → write, overlapped
    first_batch_seconds: Optional[float]  # of extract_seconds, until the first batch's features (tracing)
    finalize_seconds: float    # reading every chunk back, marking complete
    runtime: Runtime


def split_records(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Manifest rows per split, in manifest order (the store's row order)."""
    return {s: [r for r in records if r.split == s] for s in SPLITS}


def split_rows(by_split: Mapping[str, Sequence[Record]]) -> dict[str, SplitRows]:
    """Labels and ids per split, as the store records them."""
    return {s: SplitRows(np.array([r.label for r in rs], np.int32), np.array([r.id for r in rs], dtype=str))
            for s, rs in by_split.items()}


def open_writer(plan: ExtractionPlan, records: Sequence[Record], out: Location) -> FeatureWriter:
    """Create or resume the partial store of ``plan`` for ``records``."""
    return FeatureWriter(out, plan.provenance.to_json(), split_rows(split_records(records)), class_names(records),
                         plan.feature_shape, plan.dtype, plan.chunk_rows)


def pending_jobs(writer: FeatureWriter) -> list[ChunkJob]:
    """One job per chunk of the store not yet written, split by split."""
    return [ChunkJob(split, chunk, writer.chunk_rows_of(split, chunk))
            for split in SPLITS for chunk in writer.pending_chunks(split)]


def log_plan(plan: ExtractionPlan, name: str, spec: FeatureSetParams,
             by_split: Mapping[str, Sequence[Record]]) -> None:
    """Log the input and output shapes of a backbone pass, once."""
    p = plan.provenance
    log.info("%s: %s (%s) cut at %r (layer %d of %d), input %dx%d → %s %s; %s, batch %d, %d rows per chunk",
             name, spec.backbone, spec.weights, p.cut, p.cut_index, p.n_layers, p.input_size, p.input_size,
             plan.feature_shape, plan.dtype, plan.runtime.device, plan.runtime.batch_size, plan.chunk_rows)
    log.info("rows per split: %s", {s: len(rs) for s, rs in by_split.items()})


def extract_feature_set(spec: FeatureSetParams, settings: ExtractParams, records: Sequence[Record], *,
                        out: Location, manifest_sha256: str, progress: bool = True) -> ExtractResult:
    """Compute and store one feature set, resuming a partial store of the same provenance.

    Parameters
    ----------
    spec : FeatureSetParams
        Backbone, weights, cut, size (and an optional dtype override).
    settings : ExtractParams
        Batch size, dtype, chunk size, seed, XLA and mixed precision.
    records : sequence of Record
        The manifest rows; their order within a split is the store's row order.
    out : Location
        The final store path (or fsspec URL).
    manifest_sha256 : str
        Recorded in the provenance, so features of another manifest are never mixed in.

    Returns
    -------
    ExtractResult
    """
    started = time.perf_counter()
    backbone = plan_extraction(spec, settings, manifest_sha256=manifest_sha256)
    by_split = split_records(records)
    writer = open_writer(backbone.plan, records, out)
    built = time.perf_counter()
    log_plan(backbone.plan, store_name(out), spec, by_split)
    jobs = pending_jobs(writer)
    total = sum(len(rs) for rs in by_split.values())
    todo = sum(len(job.rows) for job in jobs)
    if total - todo:
        log.info("resuming: %d rows already stored, %d to go", total - todo, todo)
    run = run_jobs(backbone, jobs, by_split, lambda job, block: writer.write_chunk(job.split, job.chunk, block),
                   name=f"extract {store_name(out)}", progress=progress)
    extracted = time.perf_counter()
    if todo:
        log.info("extracted %d images in %.1f s (%.1f images/s)", todo, extracted - built,
                 todo / (extracted - built))
    path = writer.finalize()
    return ExtractResult(path=path, rows=total, computed=todo, build_seconds=built - started,
                         extract_seconds=extracted - built, first_batch_seconds=run.first_batch_seconds,
                         finalize_seconds=time.perf_counter() - extracted, runtime=backbone.plan.runtime)


def augment_feature_set(spec: FeatureSetParams, settings: ExtractParams, records: Sequence[Record], *,
                        out: Location, manifest_sha256: str, progress: bool = True) -> int:
    """Compute the missing augmented views of one feature set.

    Parameters
    ----------
    spec : FeatureSetParams
    settings : ExtractParams
        Its ``augment`` section says how many views, which ops, which seed,
        and whether val/test get views (TTA).
    records : sequence of Record
    out : Location
        The views store.
    manifest_sha256 : str

    Returns
    -------
    int
        Rows computed by this run (0 when every wanted view was already there).
    """
    from pipeline.extraction.augmentation import build_layers

    augment = settings.augment
    backbone: Backbone = plan_extraction(spec, settings, manifest_sha256=manifest_sha256)
    plan = backbone.plan
    by_split = split_records(records)
    splits = SPLITS if augment.tta else ("train",)
    provenance = dataclasses.replace(plan.provenance, augment={"ops": dict(augment.ops), "seed": augment.seed})
    writer = ViewWriter(out, provenance.to_json(), {s: r for s, r in split_rows(by_split).items() if s in splits},
                        class_names(records), plan.feature_shape, plan.dtype, plan.chunk_rows, augment.views)
    jobs = [ChunkJob(split, chunk, writer.chunk_rows_of(split, chunk), view)
            for view in range(augment.views) for split in SPLITS if split in splits
            for chunk in writer.pending(split, view)]
    name = store_name(out)
    if jobs:
        log_plan(plan, f"augment {name}", spec, {s: by_split[s] for s in splits})
        log.info("%d views × %s: %d image passes to compute (ops %s, seed %d)", augment.views, list(splits),
                 sum(len(j.rows) for j in jobs), dict(augment.ops), augment.seed)
    run = run_jobs(backbone, jobs, by_split,
                   lambda job, block: writer.write_chunk(job.split, job.view, job.chunk, block),
                   name=f"augment {name}", progress=progress, augment=(build_layers(augment.ops), augment.seed))
    writer.finalize()
    return run.rows
