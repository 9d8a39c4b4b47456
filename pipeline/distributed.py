"""Extraction on a Dask cluster: workers write disjoint chunks of one Zarr store.

The client (the extract stage) only coordinates: it asks a worker to describe
the extraction (feature shape, provenance, chunking, resolved on the worker's
device), creates or resumes the partial store, cuts the pending chunks into
chunk-aligned shards, maps them onto the cluster, and finally verifies the
store and marks it complete. Each worker process builds the truncated model
once and keeps it (:data:`_EXTRACTIONS`), streams its shard's images through
it and writes its own chunks straight into the store — chunks are separate
files, so no locking. When a worker dies, Dask reruns its shards elsewhere;
a rerun skips the chunks already ticked in ``done``, so finished work is kept
and the result equals a single-process run.

Point ``extract.scheduler`` (or ``DASK_SCHEDULER_ADDRESS``) at a scheduler
started with ``dask scheduler`` and workers started with ``dask worker
<address> --nthreads 1`` (one per GPU).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.config import SPLITS, ExtractParams, FeatureSetParams
from pipeline.data import Record, class_names
from pipeline.extract import (ExtractResult, Extraction, Job, describe, plan_extraction, run_jobs, split_records,
                              split_rows)
from pipeline.locations import Location
from pipeline.store import FeatureWriter, fingerprint, store_name

log = logging.getLogger(__name__)

# Per worker process: the built model of each extraction it has run, so a
# worker loads its backbone once however many shards it gets.
_EXTRACTIONS: dict[str, Extraction] = {}


def scheduler_address(settings: ExtractParams) -> Optional[str]:
    """The Dask scheduler to use: ``extract.scheduler``, else ``$DASK_SCHEDULER_ADDRESS``, else none."""
    return settings.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


@dataclass(frozen=True)
class PathOnly:
    """The one field of a manifest record a worker needs."""

    path: str


def _key(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str) -> str:
    return fingerprint({"spec": repr(spec), "settings": repr(settings), "manifest": manifest_sha256})


def _worker_extraction(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str) -> Extraction:
    key = _key(spec, settings, manifest_sha256)
    if key not in _EXTRACTIONS:
        _EXTRACTIONS[key] = plan_extraction(spec, settings, manifest_sha256=manifest_sha256)
    return _EXTRACTIONS[key]


def describe_on_worker(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str) -> Extraction:
    """Run on a worker: build (and keep) the model, return the extraction without it."""
    return replace(_worker_extraction(spec, settings, manifest_sha256), cut=None, steps={})


def run_shard(spec: FeatureSetParams, settings: ExtractParams, manifest_sha256: str, partial: str,
              shard: Sequence[Job], paths: dict[str, dict[int, PathOnly]]) -> int:
    """Run on a worker: compute the chunks of ``shard`` not yet done and write them into ``partial``.

    Returns
    -------
    int
        Rows computed (0 when a retried shard finds every chunk already written).
    """
    import zarr

    from pipeline.store import write_rows

    extraction = _worker_extraction(spec, settings, manifest_sha256)
    group = zarr.open_group(partial, mode="r+")
    todo = [job for job in shard if not group[job.split]["done"][job.chunk]]
    return run_jobs(extraction, todo, paths, lambda job, block: write_rows(group, job.split, job.chunk, block),
                    name=f"shard of {Path(partial).stem}", progress=False)


def shards_of(jobs: Sequence[Job], chunks_per_shard: int) -> list[list[Job]]:
    """Consecutive chunk-aligned shards of at most ``chunks_per_shard`` chunks, never across splits."""
    shards: list[list[Job]] = []
    for job in jobs:
        if shards and len(shards[-1]) < chunks_per_shard and shards[-1][-1].split == job.split:
            shards[-1].append(job)
        else:
            shards.append([job])
    return shards


def _paths_of(shard: Sequence[Job], by_split: dict[str, list[Record]]) -> dict[str, dict[int, PathOnly]]:
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
        As :func:`pipeline.extract.extract_feature_set`.
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
        extraction = client.submit(describe_on_worker, spec, settings, manifest_sha256, pure=False).result()
        by_split = split_records(records)
        writer = FeatureWriter(out, extraction.provenance, split_rows(by_split), class_names(records),
                               extraction.feature_shape, extraction.dtype, extraction.chunk_rows)
        built = time.perf_counter()
        describe(extraction, f"extract {store_name(out)} on {client.scheduler.address}", spec, by_split)
        jobs = [Job(split, chunk, range(*writer.chunk_slice(split, chunk).indices(len(by_split[split]))))
                for split in SPLITS for chunk in writer.pending_chunks(split)]
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
                         build_seconds=built - started, extract_seconds=extracted - built,
                         finalize_seconds=time.perf_counter() - extracted, runtime=extraction.runtime)
