"""Where shoulders keeps what it can rebuild: the user's cache folder, outside the project and outside DVC.

One function, so that every cache (converted weights, compiled programs, batch
sizes, prepare's record of file stats) agrees on the folder and on the
environment variables that move it.
"""

from __future__ import annotations

import os
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
