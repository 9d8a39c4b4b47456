"""The command-line reference: the ``shoulders`` command's own ``--help`` text, for it and each subcommand.

Rendered from :func:`pipeline.cli.shoulders.build_parser` when the site is built (and,
for ``shoulders predict``, which parses its own options, from
:func:`pipeline.export.predict_command.main` asked for ``--help``), so the page shows
exactly what the installed command prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os

from pipeline.cli.shoulders import build_parser
from pipeline.export.predict_command import main as predict_main

WIDTH = "100"  # argparse wraps help text to $COLUMNS: a fixed width keeps the page the same on every machine


def page() -> str:
    """The Markdown of ``reference/cli.md``."""
    with _columns(WIDTH):
        parser = build_parser()
        lines = [
            "# Command line",
            "",
            (
                "`shoulders` (also `python -m pipeline`) looks into feature stores and backbones, checks them, "
                "and classifies images with an exported model. The text below is each command's `--help`, "
                "generated from the code when this site is built."
            ),
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        for name, sub in _subcommands(parser).items():
            text = _predict_help() if name == "predict" else sub.format_help()
            lines += [f"## `shoulders {name}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _predict_help() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        predict_main(["--help"])
    return out.getvalue()


@contextlib.contextmanager
def _columns(width: str):
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
