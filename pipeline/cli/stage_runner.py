"""Running a stage module as a command: logging set-up, one-line errors, exit statuses.

Stage modules call :func:`run_stage` under ``if __name__ == "__main__"``, so
importing them sets nothing up. Running them, the failures people meet — a bad
parameter or value (the message names the key, file or value), a corrupt or
stale store (the store and chunk named), a missing input, a full disk, a quota,
a permission denied, a read-only file system — end in one line saying what
failed, where, and what to do, and exit status 1. ``--debug`` anywhere on the
command line (or ``SHOULDERS_DEBUG=1``) shows the traceback instead. Anything
else is a bug and keeps its traceback.

Quiet unless asked: the log lines libraries write for themselves — TensorFlow's,
XLA's and absl's C++ logs (oneDNN, CPU features, CUDA probing), written to the
stderr file descriptor before any Python setting can reach them — are dropped,
and the Python loggers of those libraries show errors only. ``--verbose``
anywhere on the command line (or ``SHOULDERS_VERBOSE=1``, e.g. for ``dvc repro``)
shows everything. Fatal C++ lines (``F...``) always pass.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence

from pipeline.config import ParamsError

log = logging.getLogger("pipeline")

DEBUG_FLAG = "--debug"
VERBOSE_FLAG = "--verbose"
# Libraries whose own logs are noise to someone running a stage (their errors still show).
NOISY_LOGGERS = ("absl", "tensorflow", "keras", "jax", "openvino", "h5py", "numexpr")
# Lines those libraries write straight to file descriptor 2: absl's C++ log format (severity I/W/E, date,
# time, thread, file:line]), absl's notice that it is not initialised, and TensorFlow's CPU-feature advice.
LIBRARY_NOISE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)
# Errors that describe bad input (params, files, stores) or the machine (disk, permissions), not bugs.
USER_ERRORS = (ParamsError, ValueError, OSError)

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)
# What to do after a failure to write: nothing written before is lost (atomic files, resumable stores).
_RERUN = (
    "then rerun: an interrupted extraction resumes from its last written chunk, and every file and "
    "store row written before is intact"
)


def take_debug_flag(argv: Sequence[str], flag: str = DEBUG_FLAG) -> tuple[bool, list[str]]:
    """``(whether flag (--debug) was given, the arguments without it)``."""
    rest = [a for a in argv if a != flag]
    return len(rest) != len(argv), rest


def run_stage(main: Callable[[], int | None], *, debug: bool | None = None) -> None:
    """Run a stage's ``main()`` with logging configured; exit with its status, or 1 and one line on a user error.

    Parameters
    ----------
    main : callable
        Returns ``None`` (success) or an exit status.
    debug : bool, optional
        Show tracebacks. ``None``: ``--debug`` is looked for (and removed) in ``sys.argv``.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if debug is None:
        debug, sys.argv[1:] = take_debug_flag(sys.argv[1:])
    debug = debug or bool(os.environ.get("SHOULDERS_DEBUG"))
    verbose, sys.argv[1:] = take_debug_flag(sys.argv[1:], VERBOSE_FLAG)
    verbose = verbose or bool(os.environ.get("SHOULDERS_VERBOSE"))
    if verbose:  # the lines kept at DEBUG (one per head variant, the weights' full paths) as well
        logging.getLogger().setLevel(logging.DEBUG)
    restore = None if verbose else quiet_library_logs()
    try:
        status = main()
    except USER_ERRORS as error:
        if debug:
            raise
        log.error("%s (--debug shows the traceback)", describe(error))
        status = 1
    finally:
        _stop_worker_pools()
        if restore is not None:
            restore()
    if status:
        # Out of the except clause: the error and the frames of its traceback are let go by now.
        _finish_abandoned_work()
        sys.exit(status)


def _finish_abandoned_work() -> None:
    """Close what a failed stage left suspended, while the interpreter can still run it.

    A stage that fails half-way leaves generators suspended mid-stream: an
    extraction's batch stream still has inferences in flight on OpenVINO's
    threads and decoding threads behind it. Only reference cycles of the error's
    frames hold them, so only a cyclic collection closes them (their ``finally``
    waits for the inferences and stops the threads). Left to the collection at
    interpreter exit, an inference that finishes then finds the interpreter
    finalising: its callback's thread is ended inside OpenVINO's C++ code, which
    catches the unwinding, and glibc aborts the process ("FATAL: exception not
    rethrown", SIGABRT, exit status 134) after the one-line error.
    """
    import gc

    gc.collect()


def _stop_worker_pools() -> None:
    """Stop joblib's loky workers, if any started: they hold the log pipe open and would only idle until exit."""
    if "joblib" not in sys.modules:
        return
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def quiet_library_logs() -> Callable[[], None]:
    """Silence the libraries' own logs (module docstring) until the returned function is called.

    File descriptor 2 becomes a pipe that a thread copies to the real stderr, line by line (a
    carriage return ends a line too, so progress bars pass), leaving out :data:`LIBRARY_NOISE`.
    """
    # Before TensorFlow is imported (the stages import it lazily): its logs after absl is initialised.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_copy_without_noise, args=(read_end, real), daemon=True, name="quiet-library-logs")
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # the last write end held here closes: the thread sees the end of the pipe
        # What this process wrote is in the pipe already and copied within milliseconds; a child still holding
        # the pipe (loky's resource tracker lives as long as this process) must not hold up the exit, as
        # the 5 s this waited before did on every stage that had used joblib's workers.
        thread.join(timeout=0.5)
        os.close(real)

    return restore


def _copy_without_noise(read_end: int, out: int) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            lines = re.split(rb"(?<=[\r\n])", pending + chunk)
            pending = lines.pop()  # an unfinished line (empty when the chunk ended one)
            kept = b"".join(line for line in lines if not LIBRARY_NOISE.match(line))
            if kept:
                os.write(out, kept)
    if pending and not LIBRARY_NOISE.match(pending):
        os.write(out, pending)


def describe(error: BaseException) -> str:
    """One line for an expected failure: what failed, where, and what to do."""
    if not isinstance(error, OSError) or error.errno is None:
        return str(error)  # our own messages (ParamsError, StoreError, FileNotFoundError...) say it all
    where = error.filename if error.filename is not None else "(no path given)"
    if error.filename2 is not None:
        where = f"{where} → {error.filename2}"
    reason = error.strerror or os.strerror(error.errno)
    if error.errno in _NO_SPACE:
        return f"{reason} while writing {where}: free space on that disk (or raise the quota), {_RERUN}"
    if error.errno in _DENIED:
        return (
            f"{reason}: {where}: this user ({_user()}) may not read or write it; fix its permissions "
            "(`ls -l`) or run as its owner"
        )
    if error.errno == errno.EROFS:
        return f"{reason}: {where}: write the outputs on a writable disk, {_RERUN}"
    if error.errno == errno.ENOENT:
        return f"{reason}: {where}: a missing input; `dvc repro` makes the outputs of earlier stages"
    return f"{reason}: {where} ({errno.errorcode.get(error.errno, error.errno)})"


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid()) if hasattr(os, "getuid") else "the current user"
