"""Running a stage module as a command: logging set-up and clean errors.

Stage modules call :func:`run_stage` under ``if __name__ == "__main__"``, so
importing them sets nothing up, while running them prints a one-line error
(the message names the bad key, file or value) instead of a traceback for the
mistakes users make; ``SHOULDERS_DEBUG=1`` shows the traceback too.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from pipeline.config import ParamsError

log = logging.getLogger("pipeline")

# Errors that describe bad input (params, files, stores), not bugs.
USER_ERRORS = (ParamsError, ValueError, FileNotFoundError, NotADirectoryError)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main()`` with logging configured; exit 1 with the message on a user error."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except USER_ERRORS as error:
        if os.environ.get("SHOULDERS_DEBUG"):
            raise
        log.error("%s", error)
        sys.exit(1)
