"""Backbones: the registry of families and cuts, and the EfficientNet-Lite0 port."""

from pipeline.backbones.registry import (
    FAMILIES,
    CutModel,
    Family,
    build_cut_model,
    family,
    file_sha256,
    input_size,
    layer_names,
    validate_feature_set,
)

__all__ = [
    "FAMILIES",
    "CutModel",
    "Family",
    "build_cut_model",
    "family",
    "file_sha256",
    "input_size",
    "layer_names",
    "validate_feature_set",
]
