"""Extraction on a Dask cluster: workers write disjoint chunks of one Zarr store.

The client (the extract stage) only coordinates: it asks a worker to plan the
extraction (feature shape, provenance, chunking, resolved on the worker's
device), creates or resumes the partial store, cuts the pending chunks into
chunk-aligned shards, maps them onto the cluster, and finally verifies the
store and marks it complete. Each worker process builds the truncated model
once and keeps it (:data:`_BACKBONES`), streams its shard's images through it
and writes its own chunks straight into the store — chunks are separate files,
so no locking. When a worker dies, Dask reruns its shards elsewhere; a rerun
skips the chunks already ticked in ``done``, so finished work is kept and the
result equals a single-process run.

Point ``extract.scheduler`` (or ``DASK_SCHEDULER_ADDRESS``) at a scheduler
started with ``dask scheduler`` and workers started with ``dask worker
<address> --nthreads 1`` (one per GPU).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.feature_sets import ExtractResult, log_plan, open_writer, pending_jobs, split_records
from pipeline.extraction.plan import Backbone, ExtractionPlan, plan_extraction
from pipeline.extraction.runner import ChunkJob, run_jobs
from pipeline.manifest import Record
from pipeline.provenance import fingerprint
from pipeline.store.layout import store_name
from pipeline.store.locations import Location

log = logging.getLogger(__name__)

# Per worker process: the built backbone of each extraction it has run, so a
# worker loads its backbone once however many shards it gets.
_BACKBONES: dict[str, Backbone] = {}


@dataclass(frozen=True)
class PathOnly:
    """The one field of a manifest record a worker needs."""

    path: str


def _key(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str) -> str:
    return fingerprint({"spec": repr(spec), "settings": repr(settings), "manifest": manifest_sha256})


def _worker_backbone(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str) -> Backbone:
    key = _key(spec, settings, manifest_sha256)
    if key not in _BACKBONES:
        _BACKBONES[key] = plan_extraction(spec, settings, manifest_sha256=manifest_sha256)
    return _BACKBONES[key]


def plan_on_worker(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str) -> ExtractionPlan:
    """Run on a worker: build (and keep) the backbone, return its plan (which travels; the model does not)."""
    return _worker_backbone(spec, settings, manifest_sha256).plan


def run_shard(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str, partial: str,
              shard: Sequence[ChunkJob], paths: dict[str, dict[int, PathOnly]]) -> int:
    """Run on a worker: compute the chunks of ``shard`` not yet done and write them into ``partial``.

    Returns
    -------
    int
        Rows computed (0 when a retried shard finds every chunk already written).
    """
    import zarr

    from pipeline.store.writer import write_rows

    backbone = _worker_backbone(spec, settings, manifest_sha256)
    group = zarr.open_group(partial, mode="r+")
    todo = [job for job in shard if not group[job.split]["done"][job.chunk]]
    return run_jobs(backbone, todo, paths, lambda job, block: write_rows(group, job.split, job.chunk, block),
                    name=f"shard of {Path(partial).stem}", progress=False).rows


def shards_of(jobs: Sequence[ChunkJob], chunks_per_shard: int) -> list[list[ChunkJob]]:
    """Consecutive chunk-aligned shards of at most ``chunks_per_shard`` chunks, never across splits."""
    shards: list[list[ChunkJob]] = []
    for job in jobs:
        if shards and len(shards[-1]) < chunks_per_shard and shards[-1][-1].split == job.split:
            shards[-1].append(job)
        else:
            shards.append([job])
    return shards


def _paths_of(shard: Sequence[ChunkJob], by_split: dict[str, list[Record]]) -> dict[str, dict[int, PathOnly]]:
    # Only the paths a shard reads travel to its worker, not the whole manifest.
    paths: dict[str, dict[int, PathOnly]] = {}
    for job in shard:
        paths.setdefault(job.split, {}).update({i: PathOnly(by_split[job.split][i].path) for i in job.rows})
    return paths


def extract_distributed(spec: FeatureSetParams, settings: ExtractParams, records: Sequence[Record], *,
                        out: Location, manifest_sha256: str, address: Any, progress: bool = True) -> ExtractResult:
    """Extract one feature set on a Dask cluster (see the module docstring).

    Parameters
    ----------
    spec, settings, records, out, manifest_sha256
        As :func:`pipeline.extraction.feature_sets.extract_feature_set`.
    address : str or distributed.Client
        The scheduler's address, or a connected client.

    Returns
    -------
    ExtractResult
    """
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    started = time.perf_counter()
    client = address if isinstance(address, Client) else Client(address)
    try:
        plan = client.submit(plan_on_worker, spec, settings, manifest_sha256, pure=False).result()
        by_split = split_records(records)
        writer = open_writer(plan, records, out)
        built = time.perf_counter()
        log_plan(plan, f"extract {store_name(out)} on {client.scheduler.address}", spec, by_split)
        jobs = pending_jobs(writer)
        shards = shards_of(jobs, settings.shard_chunks)
        rows = {client.submit(run_shard, spec, settings, manifest_sha256, str(writer.partial_path), shard,
                              _paths_of(shard, by_split), pure=False): sum(len(job.rows) for job in shard)
                for shard in shards}
        total = sum(rows.values())
        log.info("%d chunks in %d shards on %d workers", len(jobs), len(shards),
                 len(client.scheduler_info()["workers"]))
        with tqdm(total=total, desc=f"extract {store_name(out)}", unit="img", disable=not progress) as bar:
            for future in as_completed(rows):
                future.result()  # a shard that failed for good raises here
                bar.update(rows[future])
        extracted = time.perf_counter()
        path = writer.finalize()
    finally:
        if not isinstance(address, Client):
            client.close()
    return ExtractResult(path=path, rows=sum(len(rs) for rs in by_split.values()), computed=total,
                         build_seconds=built - started, extract_seconds=extracted - built, first_batch_seconds=None,
                         finalize_seconds=time.perf_counter() - extracted, runtime=plan.runtime)
