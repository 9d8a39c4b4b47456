"""The command line: the ``shoulders`` command (:mod:`pipeline.cli.shoulders`) and how each stage
module runs as a command (:mod:`pipeline.cli.stage_runner`: logging set-up, one-line errors; :mod:`pipeline.cli.progress`:
a bar on a terminal, a few log lines elsewhere)."""
