"""Extraction on a Dask cluster: workers write disjoint chunks of one Zarr store.

The client (the extract stage) only coordinates: it asks a worker to plan the
extraction (feature shape, identity, chunking, resolved on the worker's
device), opens the store and plans the rows to add, and those of damaged chunks
to compute again (:class:`pipeline.store.writer.StoreWriter`), cuts the chunk writes into
shards, maps them onto the cluster, and finally reads the written chunks back
and records them. Each worker process builds the truncated model once and
keeps it (:data:`_BACKBONES`), streams its shard's images through it and
writes its own chunks straight into the store — chunks are separate files, so
no locking. When a worker dies, Dask reruns its shards elsewhere; a rerun
skips the chunks already ticked in ``done``, so finished work is kept and the
result equals a single-process run.

Point ``extract.scheduler`` (or ``DASK_SCHEDULER_ADDRESS``) at a scheduler
started with ``dask scheduler`` and workers started with ``dask worker
<address> --nthreads 1`` (one per GPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.config import ExtractParams, FeatureSetParams
from pipeline.extraction.feature_sets import ExtractResult, check_recomputable, log_plan, open_store_writer
from pipeline.extraction.plan import Backbone, ExtractionPlan, check_planned, plan_extraction
from pipeline.extraction.runner import run_jobs
from pipeline.provenance import fingerprint
from pipeline.store.filesystem import Location
from pipeline.store.layout import store_name
from pipeline.store.repair import ChunkKey
from pipeline.store.writer import ChunkWrite

log = logging.getLogger(__name__)

# Per worker process: the built backbone of each extraction it has run, so a
# worker loads its backbone once however many shards it gets.
_BACKBONES: dict[str, Backbone] = {}


def _key(spec: FeatureSetParams, settings: ExtractParams) -> str:
    return fingerprint({"spec": repr(spec), "settings": repr(settings)})


def _worker_backbone(spec: FeatureSetParams, settings: ExtractParams, expected: Mapping | None) -> Backbone:
    key = _key(spec, settings)
    if key not in _BACKBONES:
        # With the planned identity, a worker that converted this network before reads it from its cache.
        _BACKBONES[key] = plan_extraction(spec, settings, expected=expected)
    return _BACKBONES[key]


def plan_on_worker(spec: FeatureSetParams, settings: ExtractParams, expected: Mapping | None = None) -> ExtractionPlan:
    """Run on a worker: build (and keep) the backbone, return its plan (which travels; the model does not)."""
    return _worker_backbone(spec, settings, expected).plan


def run_shard(
    spec: FeatureSetParams,
    settings: ExtractParams,
    store: str,
    shard: Sequence[ChunkWrite],
    hashes: Mapping[int, str],
    paths: Mapping[str, str],
    expected: Mapping | None = None,
) -> int:
    """Run on a worker: compute the chunks of ``shard`` not yet done and write them into ``store``.

    Returns
    -------
    int
        Rows computed (0 when a retried shard finds every chunk already written).
    """
    import zarr

    from pipeline.store.writer import write_chunk

    backbone = _worker_backbone(spec, settings, expected)
    group = zarr.open_group(store, mode="r+")
    todo = [w for w in shard if not group["done"][w.chunk]]
    return run_jobs(
        backbone,
        todo,
        hashes,
        paths,
        lambda w, block: write_chunk(group, w, block),
        name=f"shard of {store_name(store)}",
        progress=False,
    ).rows


def shards_of(writes: Sequence[ChunkWrite], chunks_per_shard: int) -> list[list[ChunkWrite]]:
    """Consecutive shards of at most ``chunks_per_shard`` chunk writes."""
    return [list(writes[i : i + chunks_per_shard]) for i in range(0, len(writes), chunks_per_shard)]


def extract_distributed(
    spec: FeatureSetParams,
    settings: ExtractParams,
    wanted: Sequence[str],
    paths: Mapping[str, str],
    *,
    out: Location,
    address: Any,
    progress: bool = True,
    expected: Mapping | None = None,
    repair: Sequence[ChunkKey] | None = None,
) -> ExtractResult:
    """Extract one feature set on a Dask cluster (see the module docstring).

    Parameters
    ----------
    spec, settings, wanted, paths, out, expected, repair
        As :func:`pipeline.extraction.feature_sets.extract_feature_set`.
    address : str or distributed.Client
        The scheduler's address, or a connected client.

    Returns
    -------
    ExtractResult
    """
    from distributed import Client, as_completed

    from pipeline.cli.progress import progress_bar

    started = time.perf_counter()
    client = address if isinstance(address, Client) else Client(address)
    try:
        plan = client.submit(plan_on_worker, spec, settings, expected, pure=False).result()
        check_planned(plan, expected)
        with open_store_writer(plan, out) as writer:
            writes, counts = writer.plan(wanted, repair)
            row_hashes = writer.row_hashes()
            check_recomputable(writes, row_hashes, paths, store=writer.final_path)
            built = time.perf_counter()
            log_plan(plan, f"extract {store_name(out)} on {client.scheduler.address}", spec, counts)
            futures = {}
            for shard in shards_of(writes, settings.shard_chunks):
                hashes = {i: row_hashes[i] for w in shard for i in w.rows}
                # Only the rows and paths a shard reads travel to its worker.
                futures[
                    client.submit(
                        run_shard,
                        spec,
                        settings,
                        str(writer.path),
                        shard,
                        hashes,
                        {h: paths[h] for h in hashes.values()},
                        expected,
                        pure=False,
                    )
                ] = len(hashes)
            log.info(
                "%d chunks in %d shards on %d workers",
                len(writes),
                len(futures),
                len(client.scheduler_info()["workers"]),
            )
            with progress_bar(
                total=sum(futures.values()), desc=f"extract {store_name(out)}", unit="img", enabled=progress
            ) as bar:
                for future in as_completed(futures):
                    future.result()  # a shard that failed for good raises here
                    bar.update(futures[future])
            extracted = time.perf_counter()
            writer.finalize({**plan.run_record(), "dask_workers": len(client.scheduler_info()["workers"])})
    finally:
        if not isinstance(address, Client):
            client.close()
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
        first_batch_seconds=None,
        finalize_seconds=finished - extracted,
        runtime=plan.runtime,
        repaired=counts["repaired"],
    )
