"""Stage backbone_cost: time each feature set's frozen backbone per image, for the sweep's cost report.

Reads  ``params.yaml`` sections ``features`` and ``extract`` (``batch_size``, ``seed``).
Writes ``--out`` (``reports/backbone_cost.json``): per feature set, the seconds
       one image takes through the truncated backbone (``seconds_per_image``),
       with the batch size, input size and device it was measured with.

The measurement is :func:`pipeline.extraction.timing.time_feature_sets`; the
evaluate stage multiplies it out (:func:`pipeline.selection.cost.end_to_end_seconds`).

Usage: ``python -m pipeline.stages.backbone_cost --out reports/backbone_cost.json``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.extraction.timing import time_feature_sets


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file, e.g. reports/backbone_cost.json")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    timings = time_feature_sets(params.features, params.extract)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
