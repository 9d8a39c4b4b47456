"""Watching one fit: its wall time, its peak memory, and whether its solver converged.

:class:`Watched` wraps one ``fit`` (or one batched fit of several heads). It
measures the seconds and the peak memory (:class:`PeakRSS`), and it catches
scikit-learn's ``ConvergenceWarning``: a solver that stopped at its iteration
limit (liblinear at a large C, say). Left alone, that warning reaches the
stage's log as an anonymous line from scikit-learn's own file. Caught, it
becomes the variant's ``not_converged`` count in its score row and one log
line that names the variant (:mod:`pipeline.heads.training`). Any other
warning is passed on as it was raised.

Warning filters are process-wide: fits watched here run one at a time per
process (loky workers, or this process's own thread), as the sweep runs them.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

from sklearn.exceptions import ConvergenceWarning

__all__ = ["PeakRSS", "Watched"]


class Watched:
    """Context manager around one fit: ``seconds``, ``peak_mib`` and ``converged``, set when the block ends."""

    def __enter__(self) -> Watched:
        with contextlib.ExitStack() as stack:  # a failure to start undoes what had started
            self._caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always", ConvergenceWarning)
            self._memory = stack.enter_context(PeakRSS())
            self._contexts = stack.pop_all()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._started
        self._contexts.__exit__(*exc)  # the memory sampler stops, then the warning filters are restored
        self.peak_mib = self._memory.peak_mib
        self.converged = True
        for caught in self._caught:
            if issubclass(caught.category, ConvergenceWarning):
                self.converged = False
            else:
                warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)


class PeakRSS:
    """Context manager: the peak increase of this process's resident memory during the block, in MiB.

    Sampled every ``interval`` seconds by a daemon thread (psutil), plus once
    at exit; :mod:`pipeline.heads.sweep` says what the number means.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mib = 0.0

    def __enter__(self) -> PeakRSS:
        import psutil

        self._process = psutil.Process()
        self._baseline = self._peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mib = round((self._peak - self._baseline) / 2**20, 2)
