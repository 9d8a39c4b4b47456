"""Stage plots_page: the HTML page ``dvc plots show`` fills, with Vega inlined so it renders offline.

Reads  nothing but the installed ``vl-convert-python`` package.
Writes ``--out`` (``reports/plots_page.html``): an HTML template for
       ``dvc plots show`` with a ``{plot_divs}`` placeholder and no ``{scripts}`` one
       (:func:`pipeline.reporting.plots_page.page_template` says why and how).

Usage: ``python -m pipeline.stages.plots_page --out reports/plots_page.html``
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.reporting.plots_page import page_template

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the HTML template, e.g. reports/plots_page.html")
    args = parser.parse_args(argv)
    page = page_template()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    log.info("wrote %s (%.0f kB): `dvc plots show` renders offline with it", args.out, len(page) / 1e3)


if __name__ == "__main__":
    run_stage(main)
