"""How a long loop shows its progress: a bar on a terminal, a few log lines anywhere else.

:func:`progress_bar` is what every long loop of the package calls. On a terminal
(or in a notebook) it is a ``tqdm`` bar. Where stderr is not a terminal — a
``dvc repro > run.log 2>&1``, CI — a bar redraws itself into the file on every
update, hundreds of lines per stage; there it is a :class:`ProgressLog`
instead, which logs one INFO line at most every :data:`LOG_EVERY_SECONDS`
while the loop runs, and one line when it ends if it ran that long, so a stage
writes one line or a few per long job, none for a short one. It never changes
what a loop computes: plumbing, like :mod:`pipeline.cli.stage_runner`, that no
stage needs as a DVC dependency.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

log = logging.getLogger("pipeline.progress")

# The most often a progress line is logged where stderr is not a terminal.
LOG_EVERY_SECONDS = 30.0


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    stream=None,
    every: float = LOG_EVERY_SECONDS,
):
    """A progress bar or counter for a loop: iterate it, or ``update(n)`` it, inside ``with``.

    Parameters
    ----------
    iterable : iterable, optional
        Items to pass through, counting each.
    total : int, optional
        How many items in all (default ``len(iterable)`` where it has one).
    desc, unit : str
        Its name and what it counts, as in its lines.
    enabled : bool
        False: nothing shown at all (``--no-progress``).
    stream : file, optional
        Where a bar would be drawn (default ``sys.stderr``): a bar when it is a
        terminal or a notebook's, a :class:`ProgressLog` otherwise.
    every : float
        A :class:`ProgressLog`'s least seconds between two lines.

    Returns
    -------
    tqdm or ProgressLog
        Both iterate, ``update(n)``, ``close()``, work as context managers and
        count in ``n``.
    """
    if every <= 0:
        raise ValueError(f"every must be > 0 seconds. Received: every={every!r}")
    stream = sys.stderr if stream is None else stream
    if enabled and _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    return ProgressLog(iterable, total=total, desc=desc, unit=unit, enabled=enabled, every=every)


def _is_terminal(stream) -> bool:
    """A terminal, or a Jupyter kernel's stream (where ``tqdm.auto`` draws a widget)."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressLog:
    """A counter that logs its progress at most once every ``every`` seconds, and at its end if it ran that long.

    The interface of a ``tqdm`` bar that the package uses: iterate, ``update``,
    ``close``, ``with``, ``n``, ``total``.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        every: float = LOG_EVERY_SECONDS,
        clock=time.monotonic,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.every = every
        self.n = 0
        self.lines = 0  # progress lines logged
        self._clock = clock
        self._started = clock()
        self._last = self._started
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("a ProgressLog made without an iterable counts by update(n), it cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            self._log(now, done=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        if now - self._started >= self.every:  # a short job's own summary line says enough
            self._log(now, done=True)

    def _log(self, now: float, *, done: bool) -> None:
        if not self.enabled:
            return
        seconds = now - self._started
        rate = f", {self.n / seconds:.1f} {self.unit}/s" if seconds > 0 and self.n else ""
        if done:
            log.info("%s: %d %s in %.0f s%s", self.desc, self.n, self.unit, seconds, rate)
        else:
            of = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
            left = ""
            if self.total and self.n and self.n < self.total:
                left = f", about {(self.total - self.n) * seconds / self.n:.0f} s left"
            log.info("%s: %d%s %s after %.0f s%s%s", self.desc, self.n, of, self.unit, seconds, rate, left)
        self.lines += 1
