"""``python -m pipeline``: the same as the ``shoulders`` command."""

from pipeline.cli.shoulders import main

main()
