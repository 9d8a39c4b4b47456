"""Stage finetune: warm-start fine-tuning of the best cached dense head with its backbone's top layers.

Reads  ``heads/<key>/`` (scores and fitted heads) of the feature set named by
       ``finetune.feature_set``, the manifest, and ``params.yaml`` sections
       ``finetune``, ``features.<key>``, ``extract`` (seed, augment ops) and ``evaluate``.
Writes ``--out`` (``finetune/``): ``result.json`` (validation before and after,
       the one test score of the kept model, epochs run, seconds) and the
       trained weights ``model.weights.h5``.

The recipe is :mod:`pipeline.finetuning.warm_start`: the best cached dense head
attached to the truncated backbone, its top layers trained further on augmented
images; the better of before and after on validation is kept and scored once on
test. With ``finetune.feature_set: null`` the stage writes ``{"enabled": false}``
and runs nothing.

Usage: ``python -m pipeline.stages.finetune --heads heads --out finetune``
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.finetuning.warm_start import finetune
from pipeline.manifest import read_manifest

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", required=True, type=Path, help="folder holding heads/<key>/")
    parser.add_argument("--out", required=True, type=Path, help="folder for result.json and the weights")
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    args.out.mkdir(parents=True, exist_ok=True)
    if params.finetune.feature_set is None:
        log.info("finetune.feature_set is null: fine-tuning is off")
        result = {"enabled": False}
    else:
        result, model = finetune(params, args.heads, read_manifest(args.manifest), progress=not args.no_progress)
        model.save_weights(args.out / "model.weights.h5")
    (args.out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
