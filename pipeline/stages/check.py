"""Stage check: every feature set's cut names a layer of its backbone, and its weights can be had, before any extraction.

Reads  ``params.yaml`` section ``features`` (loading it also checks backbone,
       weights, input size and alpha, see :func:`pipeline.config.load_params`);
       for ImageNet weights, where they will come from: the file Keras expects
       in ``$KERAS_HOME/models/`` or its download URL, which must answer
       (:mod:`pipeline.backbones.weights`), so that an offline machine stops
       here with the offline ways named instead of in the middle of an extraction.
Writes ``--out`` (``reports/checks/``): one ``<key>.json`` per feature set with
       the resolved cut, its position and the input size. Each extract stage
       depends on its own file only, so DVC runs this check before any
       extraction, while editing one feature set reruns only its own extract.

The checks are :func:`pipeline.backbones.cuts.check_cuts` and
:func:`pipeline.backbones.weights.weights_sources`. Where the weights come
from is logged, not written: it is a property of this machine, not of the
feature set.

Usage: ``python -m pipeline.stages.check --out reports/checks``
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.backbones.cuts import check_cuts
from pipeline.backbones.weights import weights_sources
from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params

log = logging.getLogger(__name__)


def write_checks(resolved: Mapping[str, dict], out: Path) -> None:
    """Write one ``<key>.json`` per feature set under ``out``, removing files of feature sets gone."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        if stale.stem not in resolved:
            stale.unlink()
    for key, entry in resolved.items():
        (out / f"{key}.json").write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for one <key>.json per feature set")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    features = load_params(args.params).features
    resolved = check_cuts(features)
    sources = weights_sources(features)
    write_checks(resolved, args.out)
    # One short line per feature set; the weights' full paths (long, and this machine's) only with --verbose.
    log.info("%d feature set(s) checked", len(resolved))
    for key, entry in resolved.items():
        log.info("  %s → %s/%s (weights: %s)", key, entry["backbone"], entry["cut"], sources[key].brief())
        log.debug("  %s: weights from %s", key, sources[key].describe())


if __name__ == "__main__":
    run_stage(main)
