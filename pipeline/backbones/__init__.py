"""Backbones: the registry of families and cuts, and the EfficientNet-Lite0 port."""

from pipeline.backbones.registry import (
    FAMILIES,
    CutModel,
    Family,
    build_cut_model,
    family,
    input_size,
    layer_names,
    preprocess_function,
    validate_feature_set,
    weights_digest,
)

__all__ = [
    "FAMILIES",
    "CutModel",
    "Family",
    "build_cut_model",
    "family",
    "input_size",
    "layer_names",
    "preprocess_function",
    "validate_feature_set",
    "weights_digest",
]
