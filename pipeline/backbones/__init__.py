"""Backbones: the registry of families and cuts, the EfficientNet-Lite ports and keras_hub presets."""

from pipeline.backbones.registry import (
    FAMILIES,
    CutModel,
    CutPoints,
    Family,
    build_cut_model,
    cut_points,
    family,
    input_size,
    layer_names,
    network_identity,
    preprocess_function,
    resolve_cut,
    validate_feature_set,
    weights_digest,
)

__all__ = [
    "FAMILIES",
    "CutModel",
    "CutPoints",
    "Family",
    "build_cut_model",
    "cut_points",
    "family",
    "input_size",
    "layer_names",
    "network_identity",
    "preprocess_function",
    "resolve_cut",
    "validate_feature_set",
    "weights_digest",
]
