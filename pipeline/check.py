"""Stage check: every feature set's cut names a layer of its backbone, before any extraction.

Reads  ``params.yaml`` section ``features`` (loading it also checks backbone,
       weights, input size and alpha, see :func:`pipeline.config.load_params`).
Writes ``--out`` (``reports/checks/``): one ``<key>.json`` per feature set with
       the resolved cut, its position and the input size. Each extract stage
       depends on its own file only, so DVC runs this check before any
       extraction, while editing one feature set reruns only its own extract.

Every backbone is built with ``weights=None`` (no download, no weights file
read), once per backbone × input size × alpha, and discarded; a cut that is not
one of its layers stops the stage with the nearest layer names, listing every
bad feature set at once.

Usage: ``python -m pipeline.check --out reports/checks``
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.config import FeatureSetParams, ParamsError, load_params
from pipeline.stage import run_stage

log = logging.getLogger(__name__)

# How many layer names an error suggests; `shoulders layers` lists them all.
_SUGGESTIONS = 5


def check_cuts(features: Mapping[str, FeatureSetParams]) -> dict[str, dict]:
    """Resolve every feature set's cut against its backbone's layer names.

    Parameters
    ----------
    features : mapping of key to FeatureSetParams
        Already validated by :func:`pipeline.config.load_params`.

    Returns
    -------
    dict of key to dict
        ``backbone``, ``weights``, ``cut`` (the layer name; the last layer for
        ``cut: null``), ``cut_index``, ``n_layers``, ``input_size``, ``alpha``.

    Raises
    ------
    ParamsError
        Naming each feature set whose cut is not a layer, or whose backbone
        cannot be built at its input size, with the nearest layer names.
    """
    from pipeline.backbones import input_size, layer_names

    names_by_build: dict[tuple, list[str]] = {}
    resolved, errors = {}, []
    for key, spec in features.items():
        size = input_size(spec)
        build = (spec.backbone, size, spec.alpha)
        if build not in names_by_build:
            try:
                names_by_build[build] = layer_names(spec)
            except ValueError as error:  # Keras refuses shapes it cannot take this way
                errors.append(f"features.{key}: {spec.backbone} cannot be built at size={size}"
                              f"{'' if spec.alpha is None else f', alpha={spec.alpha}'}: {error}")
                continue
        names = names_by_build[build]
        cut = spec.cut if spec.cut is not None else names[-1]
        if cut not in names:
            nearest = difflib.get_close_matches(cut, names, n=_SUGGESTIONS, cutoff=0.4)
            errors.append(f"features.{key}.cut: {spec.backbone} has no layer {cut!r}. "
                          + (f"Nearest: {', '.join(nearest)}. " if nearest else "")
                          + f"`shoulders layers {spec.backbone}"
                          + (f" --size {spec.size}" if spec.size else "")
                          + (f" --alpha {spec.alpha}" if spec.alpha is not None else "")
                          + f"` lists all {len(names)}")
            continue
        resolved[key] = {"backbone": spec.backbone, "weights": spec.weights, "cut": cut,
                         "cut_index": names.index(cut), "n_layers": len(names), "input_size": size,
                         "alpha": spec.alpha}
    if errors:
        raise ParamsError(f"{len(errors)} feature set(s) cannot be extracted:\n  " + "\n  ".join(errors))
    return resolved


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
    write_checks(resolved, args.out)
    log.info("%d feature set(s) checked: %s", len(resolved),
             ", ".join(f"{k} → {v['backbone']}/{v['cut']}" for k, v in resolved.items()))


if __name__ == "__main__":
    run_stage(main)
