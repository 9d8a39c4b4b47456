"""The registry of backbones: keras.applications families and EfficientNet-Lite0/1/2.

Each family knows its constructor, its own ``preprocess_input``, its default
and minimum input size and which ``alpha`` values its ImageNet weights exist
for. Constructors are named by dotted path and imported only when a model is
built, so validating params does not import TensorFlow.

A *cut* names a layer; :func:`build_cut_model` builds the truncated model once
(``keras.Model(base.inputs, base.get_layer(cut).output)``) and refuses an
unknown layer with the valid names, nearest matches first.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.provenance import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """One backbone family of the registry."""

    name: str
    factory: str                 # dotted path of the keras.applications constructor
    preprocess: str              # dotted path of its preprocess_input
    preprocessing: str           # what preprocess does, for provenance
    default_size: int
    min_size: int = 32
    alphas: Optional[tuple[float, ...]] = None   # alphas with ImageNet weights; None: no alpha
    imagenet_file: Optional[str] = None          # dotted path of a function locating the weights file


_CAFFE = "caffe: RGB→BGR, ImageNet mean subtracted, no scaling"
_TF = "tf: scaled to [-1, 1]"
_TORCH = "torch: scaled to [0, 1], ImageNet mean/std normalised"
_INSIDE = "none outside the model: the model rescales raw 0–255 RGB itself"
_APPS = "keras.applications"
_LITE = "(x - 127) / 128 on 0–255 RGB, as the Lite checkpoints were trained"

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("vgg16", f"{_APPS}.VGG16", f"{_APPS}.vgg16.preprocess_input", _CAFFE, 224),
    Family("vgg19", f"{_APPS}.VGG19", f"{_APPS}.vgg19.preprocess_input", _CAFFE, 224),
    Family("resnet50", f"{_APPS}.ResNet50", f"{_APPS}.resnet.preprocess_input", _CAFFE, 224),
    Family("resnet50_v2", f"{_APPS}.ResNet50V2", f"{_APPS}.resnet_v2.preprocess_input", _TF, 224),
    Family("inception_v3", f"{_APPS}.InceptionV3", f"{_APPS}.inception_v3.preprocess_input", _TF, 299,
           min_size=75),
    Family("xception", f"{_APPS}.Xception", f"{_APPS}.xception.preprocess_input", _TF, 299, min_size=71),
    Family("mobilenet", f"{_APPS}.MobileNet", f"{_APPS}.mobilenet.preprocess_input", _TF, 224,
           alphas=(0.25, 0.5, 0.75, 1.0)),
    Family("mobilenet_v2", f"{_APPS}.MobileNetV2", f"{_APPS}.mobilenet_v2.preprocess_input", _TF, 224,
           alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    Family("mobilenet_v3_small", f"{_APPS}.MobileNetV3Small", f"{_APPS}.mobilenet_v3.preprocess_input",
           _INSIDE, 224, alphas=(0.75, 1.0)),
    Family("mobilenet_v3_large", f"{_APPS}.MobileNetV3Large", f"{_APPS}.mobilenet_v3.preprocess_input",
           _INSIDE, 224, alphas=(0.75, 1.0)),
    Family("efficientnet_b0", f"{_APPS}.EfficientNetB0", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 224),
    Family("efficientnet_b1", f"{_APPS}.EfficientNetB1", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 240),
    Family("efficientnet_b2", f"{_APPS}.EfficientNetB2", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 260),
    Family("efficientnet_b3", f"{_APPS}.EfficientNetB3", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 300),
    Family("efficientnet_v2_b0", f"{_APPS}.EfficientNetV2B0", f"{_APPS}.efficientnet_v2.preprocess_input",
           _INSIDE, 224),
    Family("densenet121", f"{_APPS}.DenseNet121", f"{_APPS}.densenet.preprocess_input", _TORCH, 224),
    Family("convnext_tiny", f"{_APPS}.ConvNeXtTiny", f"{_APPS}.convnext.preprocess_input", _INSIDE, 224),
    *(Family(f"efficientnet_lite{n}", f"pipeline.backbones.efficientnet_lite.EfficientNetLite{n}",
             "pipeline.backbones.efficientnet_lite.preprocess_input", _LITE, size,
             imagenet_file=f"pipeline.backbones.lite_weights.lite{n}_weights_file")
      for n, size in ((0, 224), (1, 240), (2, 260))),
)}


# --------------------------------------------------------------------------- validation


def family(name: str) -> Family:
    """Look up a family by name; an unknown name lists the valid ones, nearest first."""
    if name not in FAMILIES:
        raise ValueError(f"unknown backbone {name!r}. " + _nearest_first(name, FAMILIES))
    return FAMILIES[name]


def validate_feature_set(spec: Any) -> None:
    """Check a feature set's backbone, weights, size and alpha without building it.

    Parameters
    ----------
    spec : FeatureSetParams
        Needs ``backbone``, ``weights``, ``size`` and ``alpha`` attributes.

    Raises
    ------
    ValueError
        Naming the bad field, the value received and what is allowed.
    FileNotFoundError
        If ``weights`` is a path that does not exist.
    """
    fam = family(spec.backbone)
    weights = spec.weights
    if weights not in ("imagenet", "none"):
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"weights must be 'imagenet', 'none' or a path to a weights file. Received: "
                f"weights={weights!r}, which is not a file (relative paths are from the project root)")
    size = input_size(spec)
    if size < fam.min_size:
        raise ValueError(f"{fam.name} needs an input size of at least {fam.min_size}. Received: size={size}")
    if spec.alpha is not None:
        if fam.alphas is None:
            raise ValueError(f"alpha applies to the MobileNet families only, not {fam.name}. "
                             f"Received: alpha={spec.alpha}")
        if weights == "imagenet" and spec.alpha not in fam.alphas:
            raise ValueError(f"{fam.name} has ImageNet weights for alpha in {list(fam.alphas)}. "
                             f"Received: alpha={spec.alpha}")


def preprocess_function(name: str) -> Callable:
    """The ``preprocess_input`` of family ``name`` (raw 0–255 RGB floats → the model's input)."""
    return _import(family(name).preprocess)


def input_size(spec: Any) -> int:
    """The input side length a feature set runs at: its own ``size`` or the family default."""
    return spec.size if spec.size is not None else family(spec.backbone).default_size


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class CutModel:
    """A truncated backbone ready for inference, and what describes it."""

    model: Any                   # keras.Model from (size, size, 3) to the cut layer's output
    preprocess: Callable         # float RGB 0–255 → model input
    cut: str                     # the layer's name
    cut_index: int               # its position in the base model (0 = input)
    n_layers: int                # layers in the base model
    provenance: dict


def build_cut_model(spec: Any, *, seed: int, mixed_precision: bool = False) -> CutModel:
    """Build the backbone of a feature set and truncate it at its cut, once.

    Parameters
    ----------
    spec : FeatureSetParams
    seed : int
        Seeds the initialisation of ``weights: none`` so random features are
        reproducible.
    mixed_precision : bool
        Build under Keras' ``mixed_float16`` policy (float16 compute, float32
        variables), for GPUs; the global policy is restored afterwards.

    Returns
    -------
    CutModel
    """
    import keras

    validate_feature_set(spec)
    fam = family(spec.backbone)
    size = input_size(spec)
    weights, weights_sha = _resolve_weights(fam, spec)
    keras.utils.set_random_seed(seed)
    kwargs: dict[str, Any] = {"include_top": False, "weights": weights, "input_shape": (size, size, 3)}
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        base = _import(fam.factory)(**kwargs)
    finally:
        keras.config.set_dtype_policy(previous)
    if weights is None:
        reinitialize(base, seed)
    layer_names = [layer.name for layer in base.layers]
    cut = spec.cut if spec.cut is not None else layer_names[-1]
    if cut not in layer_names:
        raise ValueError(f"{fam.name} has no layer {cut!r}. Valid cuts, nearest first: "
                         + ", ".join(_nearest(cut, layer_names)))
    model = keras.Model(base.inputs, base.get_layer(cut).output, name=f"{fam.name}_{cut}")
    provenance = {
        "backbone": fam.name,
        "weights": spec.weights,
        "weights_sha256": weights_sha,
        "cut": cut,
        "cut_index": layer_names.index(cut),
        "n_layers": len(layer_names),
        "input_size": size,
        "alpha": spec.alpha,
        "preprocessing": fam.preprocessing,
        "seed": seed if spec.weights == "none" else None,
    }
    return CutModel(model=model, preprocess=preprocess_function(fam.name), cut=cut,
                    cut_index=provenance["cut_index"], n_layers=len(layer_names), provenance=provenance)


def reinitialize(model: Any, seed: int) -> None:
    """Draw every randomly initialised variable again, from its own initializer, with a derived seed.

    Keras initializers without a seed draw one from Python's global ``random``,
    which other threads of the same process (a Dask worker's event loop, for
    one) also consume; ``set_random_seed`` alone then gives different "random"
    backbones in different processes. Seeding each initializer from (seed,
    position of its variable) makes ``weights: none`` the same network
    everywhere.
    """
    import keras

    order = {id(variable): index for index, variable in enumerate(model.weights)}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for attribute, initializer in list(vars(layer).items()):
            if not (attribute.endswith("_initializer") and isinstance(initializer, keras.initializers.Initializer)
                    and "seed" in initializer.get_config()):
                continue
            base = attribute[: -len("_initializer")]
            variable = next((getattr(layer, name) for name in (base, f"{base}_kernel", "kernel")
                             if isinstance(getattr(layer, name, None), keras.Variable)), None)
            if variable is None or id(variable) not in order:
                continue
            digest = hashlib.sha256(f"{seed}/{order[id(variable)]}".encode()).digest()
            config = {**initializer.get_config(), "seed": int.from_bytes(digest[:4], "little") & 0x7FFFFFFF}
            variable.assign(initializer.__class__.from_config(config)(variable.shape, variable.dtype))


def layer_names(spec: Any) -> list[str]:
    """Every layer name of a feature set's backbone (built with ``weights=None``)."""
    import keras

    fam = family(spec.backbone)
    kwargs: dict[str, Any] = {"include_top": False, "weights": None,
                              "input_shape": (input_size(spec),) * 2 + (3,)}
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    base = _import(fam.factory)(**kwargs)
    names = [layer.name for layer in base.layers]
    del base
    keras.backend.clear_session()
    return names


def weights_digest(spec: Any) -> Optional[str]:
    """sha256 of the weights file a feature set reads (None: random weights, or Keras' own ImageNet file).

    Needs no TensorFlow, so the identity of a feature set is known before any backbone is built.
    """
    fam = family(spec.backbone)
    if spec.weights == "none":
        return None
    if spec.weights == "imagenet":
        return None if fam.imagenet_file is None else file_sha256(_import(fam.imagenet_file)())
    return file_sha256(Path(spec.weights))


def _resolve_weights(fam: Family, spec: Any) -> tuple[Optional[str], Optional[str]]:
    weights = {"none": None, "imagenet": "imagenet"}.get(spec.weights, spec.weights)
    # Keras resolves (and, with a network, downloads) ImageNet weights it has no file of ours for.
    return weights, weights_digest(spec)


def _import(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _nearest(name: str, choices: list[str]) -> list[str]:
    close = difflib.get_close_matches(name, choices, n=8, cutoff=0.4)
    return close + [c for c in choices if c not in close]


def _nearest_first(name: str, choices: Any) -> str:
    return "Valid backbones, nearest first: " + ", ".join(_nearest(name, sorted(choices)))
