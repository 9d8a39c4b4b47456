"""Checking every feature set's cut against its backbone's layers, before any extraction.

Every backbone is built with ``weights=None`` (no download, no weights file
read), once per backbone × input size × alpha (× preset), and discarded; a cut
that is not one of its layers (for a preset: its blocks, a block index) is
reported with the nearest layer names, every bad feature set at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from pipeline.backbones.registry import CutPoints, cut_points, input_size, resolve_cut
from pipeline.config import FeatureSetParams, ParamsError

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
        ``cut: null``; a preset's block for a block index), ``cut_index``,
        ``n_layers``, ``input_size``, ``alpha`` (and ``preset``, ``blocks`` for presets).

    Raises
    ------
    ParamsError
        Naming each feature set whose cut is not a layer, or whose backbone
        cannot be built at its input size, with the nearest layer names.
    """
    points_by_build: dict[tuple, CutPoints] = {}
    resolved, errors = {}, []
    for key, spec in features.items():
        size = input_size(spec)
        build = (spec.backbone, size, spec.alpha, spec.preset)
        if build not in points_by_build:
            try:
                points_by_build[build] = cut_points(spec)
            except ValueError as error:  # Keras refuses shapes it cannot take this way
                errors.append(
                    f"features.{key}: {spec.backbone} cannot be built at size={size}"
                    f"{'' if spec.alpha is None else f', alpha={spec.alpha}'}: {error}"
                )
                continue
        points = points_by_build[build]
        names = list(points.names)
        if spec.preset is not None:
            try:
                cut = resolve_cut(
                    spec.cut,
                    points,
                    backbone=f"preset {spec.preset}",
                    blocks=spec.blocks,
                    listing=f"`shoulders layers hub --preset {spec.preset}`",
                )
            except ValueError as error:
                errors.append(f"features.{key}.cut: {error}")
                continue
        else:
            cut = spec.cut if spec.cut is not None else names[-1]
        if cut not in names:
            nearest = difflib.get_close_matches(cut, names, n=_SUGGESTIONS, cutoff=0.4)
            errors.append(
                f"features.{key}.cut: {spec.backbone} has no layer {cut!r}. "
                + (f"Nearest: {', '.join(nearest)}. " if nearest else "")
                + f"`shoulders layers {spec.backbone}"
                + (f" --size {spec.size}" if spec.size else "")
                + (f" --alpha {spec.alpha}" if spec.alpha is not None else "")
                + f"` lists all {len(names)}"
            )
            continue
        resolved[key] = {
            "backbone": spec.backbone,
            "weights": spec.weights,
            "cut": cut,
            "cut_index": names.index(cut),
            "n_layers": len(names),
            "input_size": size,
            "alpha": spec.alpha,
        }
        if spec.preset is not None:
            resolved[key].update(preset=spec.preset, blocks=spec.blocks)
    if errors:
        raise ParamsError(f"{len(errors)} feature set(s) cannot be extracted:\n  " + "\n  ".join(errors))
    return resolved
