"""One feature set in this process: rows for the images its store lacks, or their augmented views.

:func:`extract_feature_set` plans the extraction, opens the feature set's store
(:class:`pipeline.store.writer.StoreWriter`: in place when its identity
matches, else a new one), computes rows for the images that have none and
recomputes those of chunks that fail their digests — every other row is reused
as it is — and finalises the store.
:func:`augment_feature_set` does the same for K seeded augmented views of the
images that need views (training images; val and test too for test-time
augmentation), adding new views to old rows as K grows.
:mod:`pipeline.extraction.distributed` does the first on a Dask cluster,
sharing :func:`open_store_writer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.plan import Backbone, ExtractionPlan, plan_extraction
from pipeline.extraction.runner import run_jobs
from pipeline.extraction.runtime_choice import Runtime
from pipeline.store.filesystem import Location
from pipeline.store.layout import store_name
from pipeline.store.repair import ChunkKey, chunk_order, unrecoverable
from pipeline.store.writer import ChunkWrite, StoreWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What one extraction did: for its report (``reports/extract/<key>.json``), logs and benchmarks."""

    path: Location
    images: int  # distinct images wanted
    reused: int  # of those, already in the store
    computed: int  # rows (or, for views, image × view passes) computed by this run
    rows: int  # rows in the store now
    seconds: float  # the whole extraction
    build_seconds: float  # building the truncated model
    extract_seconds: float  # decode → inference → write, overlapped
    first_batch_seconds: float | None  # of extract_seconds, until the first batch's features (tracing)
    finalize_seconds: float  # reading written chunks back, recording digests
    runtime: Runtime | None  # None when nothing was computed (no backbone was built)
    repaired: int = 0  # of computed, old rows of chunks that failed their digests

    def report(self) -> dict:
        """The accounting written to ``reports/extract/<key>.json`` (a DVC metrics file)."""
        speed = self.computed / self.extract_seconds if self.computed and self.extract_seconds else None
        steady = None
        if speed is not None and self.first_batch_seconds is not None and self.runtime is not None:
            after = self.extract_seconds - self.first_batch_seconds
            rest = self.computed - min(self.computed, self.runtime.batch_size or 0)
            steady = rest / after if rest and after > 0 else None
        return {
            "images": self.images,
            "reused": self.reused,
            "computed": self.computed,
            "repaired": self.repaired,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "images_per_second": None if speed is None else round(speed, 2),
            # after the first batch: start-up (tracing, compilation) excluded
            "steady_images_per_second": None if steady is None else round(steady, 2),
            "build_seconds": round(self.build_seconds, 3),
            "runtime": None if self.runtime is None else self.runtime.name,
            "device": None if self.runtime is None else self.runtime.device,
            "precision": None if self.runtime is None else self.runtime.precision,
            "batch_size": None if self.runtime is None else self.runtime.batch_size,
        }

    def summary(self, name: str) -> str:
        """The one line an extraction logs."""
        report = self.report()
        speed = report["images_per_second"]
        repaired = f" ({self.repaired} of them repairing damaged chunks)" if self.repaired else ""
        return (
            f"{name}: {self.images} images, {self.reused} reused, {self.computed} computed{repaired} in "
            f"{self.seconds:.1f} s" + (f" ({speed:.1f} images/s)" if speed else "") + f"; {self.rows} rows"
        )


def nothing_to_do(path: Location, images: int, rows: int, started: float) -> ExtractResult:
    """The result of an extraction that found every row already there (no backbone built)."""
    return ExtractResult(
        path=path,
        images=images,
        reused=images,
        computed=0,
        rows=rows,
        seconds=time.perf_counter() - started,
        build_seconds=0.0,
        extract_seconds=0.0,
        first_batch_seconds=None,
        finalize_seconds=0.0,
        runtime=None,
    )


def open_store_writer(plan: ExtractionPlan, out: Location, *, views: int | None = None) -> StoreWriter:
    """The writer of ``plan``'s store at ``out`` (a views store with ``views``)."""
    return StoreWriter(
        out,
        plan.identity,
        plan.provenance.to_json(),
        feature_shape=plan.feature_shape,
        dtype=plan.dtype,
        chunk_rows=plan.chunk_rows,
        views=views,
    )


def log_plan(plan: ExtractionPlan, name: str, spec: FeatureSetParams, counts: Mapping[str, int]) -> None:
    """Log the input and output shapes of a backbone pass, and what it will compute, once."""
    p = plan.provenance
    log.info(
        "%s: %s (%s) cut at %r (layer %d of %d), input %dx%d → %s %s; %s, batch %d, %d rows per chunk",
        name,
        spec.backbone,
        spec.weights,
        p.cut,
        p.cut_index,
        p.n_layers,
        p.input_size,
        p.input_size,
        plan.feature_shape,
        plan.dtype,
        plan.runtime.device,
        plan.runtime.batch_size,
        plan.chunk_rows,
    )
    log.info(
        "%s: %d images, %d with rows already, %d to compute",
        name,
        counts["images"],
        counts["reused"],
        counts["computed"],
    )


def check_recomputable(
    writes: Sequence[ChunkWrite], row_hashes: Sequence[str], paths: Mapping[str, str], *, store: Location
) -> None:
    """Refuse, before any image is read, rows to compute whose image has no file: old rows of a damaged chunk
    whose images are no longer in the dataset (new rows are always of the dataset's images).

    Raises
    ------
    StoreError
        Naming the store, the chunks, how many rows, and what to do.
    """
    lost = {}
    for write in writes:
        for row in write.rows:
            if row_hashes[row] not in paths:
                lost.setdefault(row, (write.chunk, write.view))
    if lost:
        raise unrecoverable(store, sorted(set(lost.values()), key=chunk_order), len(lost))


def extract_feature_set(
    spec: FeatureSetParams,
    settings: ExtractParams,
    wanted: Sequence[str],
    paths: Mapping[str, str],
    *,
    out: Location,
    progress: bool = True,
    expected: Mapping | None = None,
    repair: Sequence[ChunkKey] | None = None,
) -> ExtractResult:
    """Add rows for the images of ``wanted`` that the feature set's store lacks, recompute the rows of its chunks
    that fail their digests, resuming an interrupted run.

    Parameters
    ----------
    spec : FeatureSetParams
        Backbone, weights, cut, size (and an optional dtype override).
    settings : ExtractParams
        Batch size, dtype, chunk size, seed, XLA and mixed precision.
    wanted : sequence of str
        The content hashes of the images to have rows for.
    paths : mapping of sha256 to path
        Where each image's bytes are (checked against the hash as they are read):
        those of ``wanted``, and of any other image a damaged chunk may hold.
    out : Location
        The store (or fsspec URL).
    expected : mapping, optional
        The planned identity (:func:`pipeline.extraction.plan.planned_identity`).
    repair : sequence of (chunk, view), optional
        The store's chunks that fail their digests, if the caller looked
        (:func:`pipeline.store.repair.find_damage`); None: the writer looks.

    Returns
    -------
    ExtractResult
    """
    started = time.perf_counter()
    backbone = plan_extraction(spec, settings, expected=expected)
    plan = backbone.plan
    with open_store_writer(plan, out) as writer:
        writes, counts = writer.plan(wanted, repair)
        row_hashes = writer.row_hashes()
        check_recomputable(writes, row_hashes, paths, store=writer.final_path)
        built = time.perf_counter()
        name = f"extract {store_name(out)}"
        log_plan(plan, name, spec, counts)
        run = run_jobs(backbone, writes, row_hashes, paths, writer.write, name=name, progress=progress)
        extracted = time.perf_counter()
        writer.finalize(plan.run_record())
    finished = time.perf_counter()
    return ExtractResult(
        path=writer.final_path,
        images=counts["images"],
        reused=counts["reused"],
        computed=counts["computed"],
        rows=writer.rows,
        seconds=finished - started,
        build_seconds=built - started,
        extract_seconds=extracted - built,
        first_batch_seconds=run.first_batch_seconds,
        finalize_seconds=finished - extracted,
        runtime=plan.runtime,
        repaired=counts["repaired"],
    )


def augment_feature_set(
    spec: FeatureSetParams,
    settings: ExtractParams,
    wanted: Sequence[str],
    paths: Mapping[str, str],
    *,
    out: Location,
    progress: bool = True,
    expected: Mapping | None = None,
    repair: Sequence[ChunkKey] | None = None,
) -> ExtractResult:
    """Compute the missing augmented views of the images of ``wanted`` (and those of damaged chunks again).

    Parameters
    ----------
    spec : FeatureSetParams
    settings : ExtractParams
        Its ``augment`` section says how many views (K), which ops, which seed.
    wanted : sequence of str
        The images that get views.
    paths, out, expected, repair
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
        writes, counts = writer.plan(wanted, repair)
        row_hashes = writer.row_hashes()
        check_recomputable(writes, row_hashes, paths, store=writer.final_path)
        built = time.perf_counter()
        name = f"augment {store_name(out)}"
        if writes:
            log_plan(plan, name, spec, counts)
            log.info(
                "%s: %d views (ops %s, seed %d): %d image passes to compute",
                name,
                augment.views,
                dict(augment.ops),
                augment.seed,
                sum(len(w.rows) for w in writes),
            )
        run = run_jobs(
            backbone,
            writes,
            row_hashes,
            paths,
            writer.write,
            name=name,
            progress=progress,
            augment=(dict(augment.ops), augment.seed),
        )
        extracted = time.perf_counter()
        writer.finalize(plan.run_record())
    finished = time.perf_counter()
    return ExtractResult(
        path=writer.final_path,
        images=counts["images"],
        reused=counts["reused"],
        computed=run.rows,
        rows=writer.rows,
        seconds=finished - started,
        build_seconds=built - started,
        extract_seconds=extracted - built,
        first_batch_seconds=run.first_batch_seconds,
        finalize_seconds=finished - extracted,
        runtime=plan.runtime,
        repaired=counts["repaired"],
    )
