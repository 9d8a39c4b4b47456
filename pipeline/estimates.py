"""How long a long stage will take on this machine, from what its last run here measured.

The extract and heads stages log one line before they start on the user's
data: the work to do (images through a backbone; variants × training images to
fit) times the seconds per unit their last run on this machine took, or "no
estimate yet on this machine" the first time. Each run then records its own
rate. The rates live in ``run-estimates.json`` in the shoulders cache folder
(:func:`pipeline.cache_dir.cache_dir`), keyed by the machine
(:func:`pipeline.cache_dir.machine`: CPU model, usable cores), by what the
cost depends on (the backbone and its settings; the heads' worker count), and
by the order of magnitude of the work, so that a rate is never carried from
one machine, or one backbone, to another, nor from a tiny run (mostly fixed
costs: starting workers, compiling) to a large one: a heads run of 2,000
variant × image fits once predicted 37 minutes for one of 100,000 that took 48 s.
An estimate is a guide, not a promise: a busy machine, or a grid of slower
kinds than last time, takes longer.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from pipeline.cache_dir import cache_dir, machine, read_record, write_record
from pipeline.provenance import fingerprint

log = logging.getLogger(__name__)

ESTIMATES_FILE = "run-estimates.json"


def estimates_file() -> Path:
    """``run-estimates.json`` in the shoulders cache folder."""
    return cache_dir() / ESTIMATES_FILE


def _entry_key(job: str, key: Mapping, units: int) -> str:
    scale = math.floor(math.log10(max(units, 1)))  # runs within one order of magnitude of work share a rate
    return fingerprint({"job": job, **machine(), **dict(key), "scale": scale}, length=20)


def seconds_per_unit(job: str, key: Mapping, units: int) -> float | None:
    """The rate the last run of ``job`` with ``key`` and work of the same order of magnitude as ``units``
    measured on this machine, or None."""
    entry = _read().get(_entry_key(job, key, units))
    return None if entry is None else float(entry["seconds_per_unit"])


def record(job: str, key: Mapping, *, units: int, seconds: float) -> None:
    """Keep this run's rate (``seconds / units``) for the next estimate; nothing when there were no units."""
    if units <= 0 or seconds <= 0:
        return
    entries = _read()
    entries[_entry_key(job, key, units)] = {
        "job": job,
        "key": dict(key),
        "machine": machine(),
        "seconds_per_unit": seconds / units,
        "units": units,
        "seconds": round(seconds, 3),
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write(entries)


def estimate_line(job: str, key: Mapping, *, units: int, work: str, unit: str) -> str:
    """The line a stage logs before it starts: ``work`` (what it will do, in words) and how long it should take.

    Parameters
    ----------
    job, key
        What the rate was recorded under (:func:`record`).
    units : int
        How much work, in the units of the rate.
    work : str
        The work in words, e.g. ``"extract cats.zarr: 1200 images to compute"``.
    unit : str
        The unit in words, e.g. ``"image"`` or ``"variant × image"``.
    """
    rate = seconds_per_unit(job, key, units)
    if rate is None:
        return f"{work}: no estimate yet on this machine for this much work (this run's time is kept for the next)"
    return (
        f"{work}: about {duration(rate * units)} on this machine "
        f"(its last run here took {rate * 1000:.3g} ms per {unit})"
    )


def duration(seconds: float) -> str:
    """``"40 s"``, ``"3 min 20 s"``, ``"2 h 05 min"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _read() -> dict:
    return read_record(estimates_file())


def _write(entries: dict) -> None:
    write_record(estimates_file(), entries, what="this run's time")
