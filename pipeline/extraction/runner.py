"""Streaming images through a compiled step into a store, chunk by chunk, writes overlapping inference.

A :class:`ChunkJob` is one chunk of a store to compute: rows of one split (and,
for augmented passes, one view). :func:`run_jobs` decodes the images of
consecutive jobs of the same split and view as one stream
(:func:`pipeline.extraction.inputs.image_batches`), runs each batch through the
step, checks float16 precision (:class:`~pipeline.extraction.precision.PrecisionGuard`),
cuts the output stream back into the jobs' rows (:func:`regroup`) and hands each
finished chunk to a writer thread; at most ``WRITES_IN_FLIGHT`` chunks wait, so
memory stays flat however many images there are.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from pipeline.extraction.augmentation import batch_seed
from pipeline.extraction.plan import Backbone
from pipeline.extraction.precision import PrecisionGuard

# At most this many chunks wait for the writer: bounds memory, keeps inference busy.
WRITES_IN_FLIGHT = 2


@dataclass(frozen=True)
class RunStats:
    """What :func:`run_jobs` did."""

    rows: int                             # rows computed
    seconds: float                        # the whole run, last write included
    first_batch_seconds: Optional[float]  # until the first batch's features existed (tracing included)


@dataclass(frozen=True)
class ChunkJob:
    """One chunk to compute: rows ``rows`` of ``split`` (and, for augmented passes, one view)."""

    split: str
    chunk: int
    rows: range
    view: Optional[int] = None


def run_jobs(backbone: Backbone, jobs: Sequence[ChunkJob], records: Mapping[str, Sequence],
             write: Callable[[ChunkJob, np.ndarray], None], *, name: str, progress: bool = True,
             augment: Optional[tuple[list, int]] = None) -> RunStats:
    """Stream the images of ``jobs`` through the model and hand each finished chunk to ``write``.

    Parameters
    ----------
    backbone : Backbone
    jobs : sequence of ChunkJob
        In order; consecutive jobs of the same split and view are streamed together.
    records : mapping of split to its rows
        Anything with a ``path`` per row (manifest records).
    write : callable
        ``write(job, block)`` stores one chunk (called on the writer thread).
    name : str
        For messages and the progress bar.
    augment : (layers, seed), optional
        Augment every batch first, seeded by (seed, view, split, first row).

    Returns
    -------
    RunStats
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    first: list[float] = []

    plan = backbone.plan
    infer = backbone.step(augment[0] if augment else None)
    guard = PrecisionGuard(name, plan.dtype)
    todo = sum(len(job.rows) for job in jobs)
    batch_size = plan.runtime.batch_size
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer") as pool, \
            tqdm(total=todo, desc=name, unit="img", disable=not progress) as bar:
        in_flight: deque[Future] = deque()
        for (split, view), group in itertools.groupby(jobs, key=lambda job: (job.split, job.view)):
            group = list(group)
            rows = [i for job in group for i in job.rows]
            seeds = None
            if augment:
                seeds = [batch_seed(augment[1], view, split, rows[k]) for k in range(0, len(rows), batch_size)]
            batches = _infer_batches(infer, guard, [records[split][i].path for i in rows], seeds,
                                     size=plan.provenance.input_size, batch_size=batch_size)
            for job, block in regroup(_ticking(batches, bar, first), group):
                in_flight.append(pool.submit(write, job, block))
                while len(in_flight) > WRITES_IN_FLIGHT:
                    in_flight.popleft().result()
        while in_flight:
            in_flight.popleft().result()
    return RunStats(rows=todo, seconds=time.perf_counter() - started,
                    first_batch_seconds=first[0] - started if first else None)


def _ticking(batches: Iterable[np.ndarray], bar, first: list[float]) -> Iterator[np.ndarray]:
    """Pass batches through, advancing the progress bar per batch (a chunk can take a while);
    ``first`` gets the time the first batch came out."""
    for batch in batches:
        if not first:
            first.append(time.perf_counter())
        bar.update(len(batch))
        yield batch


def _infer_batches(infer, guard: PrecisionGuard, paths: Sequence[str], seeds: Optional[Sequence[int]], *,
                   size: int, batch_size: int) -> Iterator[np.ndarray]:
    """Decode, (augment,) infer and check each batch of ``paths``; yield stored features."""
    import tensorflow as tf

    from pipeline.extraction.inputs import image_batches

    for k, batch in enumerate(image_batches(paths, size=size, batch_size=batch_size)):
        result = infer(batch) if seeds is None else infer(batch, tf.constant(seeds[k], tf.int64))
        stored, lost, nonzero, overflow, largest = result
        guard.check(int(lost), int(nonzero), int(overflow), float(largest))
        yield stored.numpy()


def regroup(outputs: Iterable[np.ndarray], jobs: Sequence[ChunkJob]) -> Iterator[tuple[ChunkJob, np.ndarray]]:
    """Cut a stream of output batches into the rows of ``jobs``, in order."""
    pending = iter(jobs)
    job = next(pending)
    buffer: list[np.ndarray] = []
    held = 0
    for out in outputs:
        buffer.append(out)
        held += len(out)
        while held >= len(job.rows):
            block = np.concatenate(buffer)
            yield job, block[:len(job.rows)]
            rest = block[len(job.rows):]
            buffer, held = ([rest], len(rest)) if len(rest) else ([], 0)
            job = next(pending, None)
            if job is None:
                # Run the batch stream to its end (its decode threads stop there), and check it is.
                for extra in outputs:
                    raise ValueError(f"{len(extra)} rows beyond the last job")
                return
