"""Running a stage module as a command: logging set-up, one-line errors, exit statuses.

Stage modules call :func:`run_stage` under ``if __name__ == "__main__"``, so
importing them sets nothing up. Running them, the failures people meet — a bad
parameter or value (the message names the key, file or value), a corrupt or
stale store (the store and chunk named), a missing input, a full disk, a quota,
a permission denied, a read-only file system — end in one line saying what
failed, where, and what to do, and exit status 1. ``--debug`` anywhere on the
command line (or ``SHOULDERS_DEBUG=1``) shows the traceback instead. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from pipeline.config import ParamsError

log = logging.getLogger("pipeline")

DEBUG_FLAG = "--debug"
# Errors that describe bad input (params, files, stores) or the machine (disk, permissions), not bugs.
USER_ERRORS = (ParamsError, ValueError, OSError)

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)
# What to do after a failure to write: nothing written before is lost (atomic files, resumable stores).
_RERUN = ("then rerun: an interrupted extraction resumes from its last written chunk, and every file and "
          "store row written before is intact")


def take_debug_flag(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """``(whether --debug was given, the arguments without it)``."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    return len(rest) != len(argv), rest


def run_stage(main: Callable[[], Optional[int]], *, debug: Optional[bool] = None) -> None:
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
    try:
        status = main()
    except USER_ERRORS as error:
        if debug:
            raise
        log.error("%s (--debug shows the traceback)", describe(error))
        sys.exit(1)
    if status:
        sys.exit(status)


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
        return (f"{reason}: {where}: this user ({_user()}) may not read or write it; fix its permissions "
                "(`ls -l`) or run as its owner")
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
