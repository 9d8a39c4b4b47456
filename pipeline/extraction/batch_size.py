"""``extract.batch_size: auto`` on a CPU: the batch size measured fastest on this machine, for this backbone.

The best batch size depends on the CPU and the network (a depthwise network's
activations fit in cache at small batches on one machine, large batches win on
another; heavy networks run the same at any size), so it is measured, not
assumed: each candidate's compiled step is timed on random images, from the
smallest up, stopping once throughput falls well below the best seen or a
single batch takes longer than :data:`SLOW_BATCH_SECONDS`. The choice is cached
in ``batch-sizes.json`` under the shoulders cache folder (``$SHOULDERS_CACHE_DIR``,
else ``~/.cache/shoulders``), keyed by the CPU, the cores this process may use,
the runtime and its version, the precision and the network, so it is measured
once per machine.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from pipeline.cache_dir import machine, read_record, write_record
from pipeline.provenance import fingerprint

log = logging.getLogger(__name__)

CANDIDATES = (4, 8, 16, 32, 64)
TIMED_CALLS = 3
# A batch this slow means a heavy network: larger batches are not tried (they run the same, only longer).
SLOW_BATCH_SECONDS = 1.5
# A candidate this much slower than the best seen ends the search.
GIVE_UP_BELOW = 0.85


def cache_file() -> Path:
    from pipeline.cache_dir import cache_dir

    return cache_dir() / "batch-sizes.json"


def measure(
    make_step: Callable[[int], Callable], input_size: int, candidates: tuple[int, ...] | None = None
) -> tuple[int, Callable, dict[int, float]]:
    """Time each candidate's step (default :data:`CANDIDATES`); return the fastest batch size, its compiled
    step and every img/s measured."""
    candidates = CANDIDATES if candidates is None else candidates
    rng = np.random.default_rng(0)
    speeds: dict[int, float] = {}
    steps: dict[int, Callable] = {}
    for batch in candidates:
        step = make_step(batch)
        images = rng.integers(0, 256, (batch, input_size, input_size, 3)).astype(np.float32)
        seconds = seconds_per_batch(step, images, rounds=TIMED_CALLS)
        speeds[batch] = batch / seconds
        steps[batch] = step
        best = max(speeds.values())
        if seconds > SLOW_BATCH_SECONDS or speeds[batch] < GIVE_UP_BELOW * best:
            break
    chosen = max(speeds, key=speeds.get)
    return chosen, steps[chosen], speeds


def seconds_per_batch(step: Callable, images: np.ndarray, *, rounds: int) -> float:
    """Median seconds per batch of ``images`` through ``step`` as extraction runs it (:func:`~pipeline.extraction.runtimes.stream`).

    Each round streams one batch per request the step keeps in flight (its
    ``requests``; 1 for a step without ``stream``), after one warm-up round.
    """
    from pipeline.extraction.runtimes import stream

    width = int(getattr(step, "requests", 1))
    for _ in stream(step, [images] * width):  # compile / warm up
        pass
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in stream(step, [images] * width):
            pass
        timings.append((time.perf_counter() - started) / width)
    return statistics.median(timings)


def _entry_key(key: Mapping) -> str:
    return fingerprint({**machine(), **dict(key)}, length=20)


def _read_cache() -> dict:
    return read_record(cache_file())


def cached_batch_size(key: Mapping) -> int | None:
    """The batch size measured before on this machine for ``key``, or None."""
    entry = _read_cache().get(_entry_key(key))
    return None if entry is None else int(entry["batch_size"])


def measured_batch_size(
    make_step: Callable[[int], Callable],
    input_size: int,
    key: Mapping,
) -> tuple[int, Callable | None]:
    """The cached choice for ``key`` (with no step compiled yet), or a fresh measurement (with its step)."""
    cached = cached_batch_size(key)
    if cached is not None:
        return cached, None
    chosen, step, speeds = measure(make_step, input_size)
    log.info(
        "batch size measured on this machine: %d (img/s: %s)",
        chosen,
        ", ".join(f"{b}: {s:.1f}" for b, s in speeds.items()),
    )
    entries = _read_cache()
    entries[_entry_key(key)] = {
        "batch_size": chosen,
        "images_per_second": {str(b): round(s, 2) for b, s in speeds.items()},
        "key": dict(key),
        "machine": machine(),
    }
    write_record(cache_file(), entries, what="the measured batch size")
    return chosen, step
