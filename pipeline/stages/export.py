"""Stage export: the chosen head and its backbone cut as one deployable model, checked, with a card.

Reads  ``reports/export_target.json`` (written by evaluate: the head chosen on
       validation, or named by ``export.variant``, its file's sha256 and its own
       scores, nothing that changes while that model does not), that head, the feature store (val for calibration,
       test for the check), the manifest, the prepare report, and ``params.yaml``
       sections ``export``, ``features``, ``extract.seed`` and ``data.max_image_pixels``.
Writes ``--out`` (``models/``): ``model.keras`` — raw uint8 images of any size
       → resize → preprocessing → truncated backbone → pooling → head, one Keras
       graph giving class probabilities, for every head kind (no pickle: a model
       folder is loaded in Keras' safe mode, see ``SECURITY.md``); for a
       combination or the ensemble, every member's branch in that one graph,
       each backbone built once (:mod:`pipeline.export.graph`) — ``ood.keras``,
       and the model card ``card.json`` / ``card.md`` (with the pixel limit
       predict applies, and the members).

The work, and the check against the pipeline on every test image before
anything is written, is :func:`pipeline.export.build.export`.

Usage: ``python -m pipeline.stages.export --target reports/export_target.json --out models``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.export.build import export
from pipeline.manifest import read_manifest
from pipeline.provenance import file_sha256


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, type=Path, help="reports/export_target.json (stage evaluate)")
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--prepare-report", default=Path("reports/prepare.json"), type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder for the model and its card, e.g. models")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    for path in (args.target, args.prepare_report):
        if not path.is_file():
            raise FileNotFoundError(f"no {path}; run `dvc repro` up to the evaluate stage first")
    export(
        load_params(args.params),
        json.loads(args.target.read_text(encoding="utf-8")),
        read_manifest(args.manifest),
        json.loads(args.prepare_report.read_text(encoding="utf-8")),
        args.out,
        manifest_sha256=file_sha256(args.manifest),
    )


if __name__ == "__main__":
    run_stage(main)
