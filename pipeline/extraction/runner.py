"""Streaming images through a compiled step into a store, chunk by chunk, writes overlapping inference.

:func:`run_jobs` takes the chunk writes a store writer planned
(:class:`pipeline.store.writer.ChunkWrite`), decodes the images of consecutive
writes of the same view as one stream (:func:`pipeline.extraction.inputs.image_batches`,
each file's bytes checked against its hash, augmented views made there), runs
each batch through the runtime's compiled step, stores it in the storage dtype
checking float16 precision (:class:`~pipeline.extraction.precision.PrecisionGuard`),
cuts the output stream back into the writes' rows (:func:`regroup`) and hands
each finished chunk to a writer thread; at most ``WRITES_IN_FLIGHT`` chunks
wait, so memory stays flat however many images there are.

Every batch has the same shape: the last one of a stream is padded to the batch
size and the padding dropped. An image's features then do not depend on which
run computed it or on its neighbours in the batch (``tests/test_incremental.py``
checks rows of a cold and an incremental run bit for bit). Augmented views are
seeded per image — (seed, view, content hash) — for the same reason.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.extraction.augmentation import augment_image, view_seed
from pipeline.extraction.plan import Backbone
from pipeline.extraction.precision import PrecisionGuard
from pipeline.store.writer import ChunkWrite

# At most this many chunks wait for the writer: bounds memory, keeps inference busy.
WRITES_IN_FLIGHT = 2


@dataclass(frozen=True)
class RunStats:
    """What :func:`run_jobs` did."""

    rows: int  # rows computed
    seconds: float  # the whole run, last write included
    first_batch_seconds: float | None  # until the first batch's features existed (tracing included)


def run_jobs(
    backbone: Backbone,
    writes: Sequence[ChunkWrite],
    row_hashes: Sequence[str],
    paths: Mapping[str, str],
    write: Callable[[ChunkWrite, np.ndarray], None],
    *,
    name: str,
    progress: bool = True,
    augment: tuple[list, int] | None = None,
) -> RunStats:
    """Compute the rows of ``writes`` and hand each finished chunk to ``write``.

    Parameters
    ----------
    backbone : Backbone
    writes : sequence of ChunkWrite
        In order; consecutive writes of the same view are streamed together.
    row_hashes : sequence of str
        The content hash of every row of the store (``row_hashes[i]`` is row ``i``'s).
    paths : mapping of sha256 to path
        Where each image's bytes are.
    write : callable
        ``write(chunk_write, block)`` stores one chunk (called on the writer thread).
    name : str
        For messages and the progress bar.
    augment : (ops, seed), optional
        Augment every image first (:func:`pipeline.extraction.augmentation.augment_image`),
        seeded by (seed, view, its content hash).

    Returns
    -------
    RunStats
    """
    from pipeline.cli.progress import progress_bar

    started = time.perf_counter()
    first: list[float] = []
    plan = backbone.plan
    infer = backbone.step()
    guard = PrecisionGuard(name, plan.dtype)
    todo = sum(len(w.rows) for w in writes)
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer") as pool,
        progress_bar(total=todo, desc=name, unit="img", enabled=progress) as bar,
    ):
        in_flight: deque[Future] = deque()
        for view, group in itertools.groupby(writes, key=lambda w: w.view):
            group = list(group)
            hashes = [row_hashes[i] for w in group for i in w.rows]
            transform = None
            if augment:
                ops, seeds = augment[0], [view_seed(augment[1], view, h) for h in hashes]
                transform = lambda index, image, ops=ops, seeds=seeds: augment_image(image, ops, seeds[index])  # noqa: E731
            batches = _infer_batches(
                infer,
                guard,
                [paths[h] for h in hashes],
                hashes,
                transform,
                size=plan.provenance.input_size,
                batch_size=plan.runtime.batch_size,
                resize=plan.resize,
            )
            try:
                for job, block in regroup(_ticking(batches, bar, first), group):
                    in_flight.append(pool.submit(write, job, block))
                    while len(in_flight) > WRITES_IN_FLIGHT:
                        in_flight.popleft().result()
            finally:
                # A failure (a full disk): wait for the inferences in flight and stop the decoding threads now,
                # not in the garbage collection at exit (abort: "FATAL: exception not rethrown").
                batches.close()
        while in_flight:
            in_flight.popleft().result()
    return RunStats(
        rows=todo, seconds=time.perf_counter() - started, first_batch_seconds=first[0] - started if first else None
    )


def _ticking(batches: Iterable[np.ndarray], bar, first: list[float]) -> Iterator[np.ndarray]:
    """Pass batches through, advancing the progress bar per batch (a chunk can take a while);
    ``first`` gets the time the first batch came out."""
    for batch in batches:
        if not first:
            first.append(time.perf_counter())
        bar.update(len(batch))
        yield batch


def _infer_batches(
    infer,
    guard: PrecisionGuard,
    paths: Sequence[str],
    hashes: Sequence[str],
    transform,
    *,
    size: int,
    batch_size: int,
    resize=None,
) -> Iterator[np.ndarray]:
    """Decode (bytes checked), (augment,) infer and store each batch; yield stored features.

    Batches go through :func:`pipeline.extraction.runtimes.stream`: a runtime that
    keeps several in flight (OpenVINO's streams) gets them as they are decoded.
    """
    from pipeline.extraction.inputs import image_batches
    from pipeline.extraction.runtimes import stream

    sizes: deque[int] = deque()

    def padded() -> Iterator[np.ndarray]:
        # reuse: a runtime is done with each batch once the next is asked for (it copies or has copied it)
        for batch in image_batches(
            paths, size=size, batch_size=batch_size, sha256=hashes, transform=transform, resize=resize, reuse=True
        ):
            sizes.append(len(batch))
            if len(batch) < batch_size:
                # The same batch shape for every image, whatever its neighbours: pad, then drop the padding.
                batch = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
            yield batch

    for features in stream(infer, padded()):
        yield guard.store(features[: sizes.popleft()])


def regroup(outputs: Iterable[np.ndarray], jobs: Sequence[ChunkWrite]) -> Iterator[tuple[ChunkWrite, np.ndarray]]:
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
            yield job, block[: len(job.rows)]
            rest = block[len(job.rows) :]
            buffer, held = ([rest], len(rest)) if len(rest) else ([], 0)
            job = next(pending, None)
            if job is None:
                # Run the batch stream to its end (its decode threads stop there), and check it is.
                for extra in outputs:
                    raise ValueError(f"{len(extra)} rows beyond the last job")
                return
