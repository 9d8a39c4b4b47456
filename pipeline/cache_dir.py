"""Where shoulders keeps what it can rebuild: the user's cache folder, outside the project and outside DVC.

One function, so that every cache (converted weights, compiled programs, batch
sizes, prepare's record of file stats) agrees on the folder and on the
environment variables that move it; :func:`machine`, the key of what is
measured once per machine there (batch sizes, backbone timings, run estimates),
and :func:`usable_cores`, the cores in that key and in every pool sized to the machine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path


def cache_dir() -> Path:
    """The shoulders cache folder (not created here).

    Returns
    -------
    Path
        ``$SHOULDERS_CACHE_DIR`` if set and non-empty, else
        ``$XDG_CACHE_HOME/shoulders``, else ``~/.cache/shoulders``.
    """
    explicit = os.environ.get("SHOULDERS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "shoulders"
    return Path.home() / ".cache" / "shoulders"


def usable_cores() -> int:
    """Cores this process may run on (its affinity: a container, ``taskset``), else every core; at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> dict:
    """What a measurement kept in the cache folder depends on besides what was measured: the CPU model and the
    cores this process may use."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cores": usable_cores(), "machine": platform.machine()}


def read_record(path: Path) -> dict:
    """A JSON record this package keeps in the cache folder; empty when missing, unreadable or torn."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):  # the next run measures again and writes it whole
        return {}


def write_record(path: Path, entries: dict, *, what: str) -> None:
    """Write a record whole (beside it, then renamed over it); a read-only cache folder only logs a warning:
    what is lost is ``what`` (e.g. "the backbone timings"), measured again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        logging.getLogger(__name__).warning("could not keep %s in %s: %s", what, path, error)
