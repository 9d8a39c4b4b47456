"""The registry of backbones: keras.applications families, EfficientNet-Lite0/1/2 and keras_hub presets.

Each family knows its constructor, its own ``preprocess_input``, its default
and minimum input size and which ``alpha`` values its ImageNet weights exist
for. Constructors are named by dotted path and imported only when a model is
built, so validating params does not import TensorFlow. The family ``hub``
(``from_preset``) builds from a keras_hub preset instead
(:mod:`pipeline.backbones.hub`): its size, resize and preprocessing are the
preset's image converter's, read from the preset (:mod:`pipeline.backbones.presets`).

A *cut* names a layer (for presets also a block, or a block index counted
from the end when negative); :func:`build_cut_model` builds the truncated model
once (``keras.Model(base.inputs, base.get_layer(cut).output)``) and refuses an
unknown cut with the valid names, nearest matches first.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.config import add_check, add_default_weights
from pipeline.provenance import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """One backbone family of the registry."""

    name: str
    factory: str  # dotted path of the keras.applications constructor
    preprocess: str  # dotted path of its preprocess_input
    preprocessing: str  # what preprocess does, for provenance
    default_size: int
    min_size: int = 32
    alphas: tuple[float, ...] | None = None  # alphas with ImageNet weights; None: no alpha
    imagenet_file: str | None = None  # dotted path of a function locating the weights file
    from_preset: bool = False  # built from a keras_hub preset: factory builds the CutModel
    default_weights: str = "imagenet"  # what an entry without `weights` gets
    # A family not built the keras.applications way names its own functions of a spec, by dotted path:
    # validate, input_size, network_identity (all without TensorFlow) and cut_points.
    hooks: dict | None = None


_CAFFE = "caffe: RGB→BGR, ImageNet mean subtracted, no scaling"
_TF = "tf: scaled to [-1, 1]"
_TORCH = "torch: scaled to [0, 1], ImageNet mean/std normalised"
_INSIDE = "none outside the model: the model rescales raw 0–255 RGB itself"
_APPS = "keras.applications"
_LITE = "(x - 127) / 128 on 0–255 RGB, as the Lite checkpoints were trained"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("vgg16", f"{_APPS}.VGG16", f"{_APPS}.vgg16.preprocess_input", _CAFFE, 224),
        Family("vgg19", f"{_APPS}.VGG19", f"{_APPS}.vgg19.preprocess_input", _CAFFE, 224),
        Family("resnet50", f"{_APPS}.ResNet50", f"{_APPS}.resnet.preprocess_input", _CAFFE, 224),
        Family("resnet50_v2", f"{_APPS}.ResNet50V2", f"{_APPS}.resnet_v2.preprocess_input", _TF, 224),
        Family("inception_v3", f"{_APPS}.InceptionV3", f"{_APPS}.inception_v3.preprocess_input", _TF, 299, min_size=75),
        Family("xception", f"{_APPS}.Xception", f"{_APPS}.xception.preprocess_input", _TF, 299, min_size=71),
        Family(
            "mobilenet",
            f"{_APPS}.MobileNet",
            f"{_APPS}.mobilenet.preprocess_input",
            _TF,
            224,
            alphas=(0.25, 0.5, 0.75, 1.0),
        ),
        Family(
            "mobilenet_v2",
            f"{_APPS}.MobileNetV2",
            f"{_APPS}.mobilenet_v2.preprocess_input",
            _TF,
            224,
            alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        ),
        Family(
            "mobilenet_v3_small",
            f"{_APPS}.MobileNetV3Small",
            f"{_APPS}.mobilenet_v3.preprocess_input",
            _INSIDE,
            224,
            alphas=(0.75, 1.0),
        ),
        Family(
            "mobilenet_v3_large",
            f"{_APPS}.MobileNetV3Large",
            f"{_APPS}.mobilenet_v3.preprocess_input",
            _INSIDE,
            224,
            alphas=(0.75, 1.0),
        ),
        Family("efficientnet_b0", f"{_APPS}.EfficientNetB0", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 224),
        Family("efficientnet_b1", f"{_APPS}.EfficientNetB1", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 240),
        Family("efficientnet_b2", f"{_APPS}.EfficientNetB2", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 260),
        Family("efficientnet_b3", f"{_APPS}.EfficientNetB3", f"{_APPS}.efficientnet.preprocess_input", _INSIDE, 300),
        Family(
            "efficientnet_v2_b0", f"{_APPS}.EfficientNetV2B0", f"{_APPS}.efficientnet_v2.preprocess_input", _INSIDE, 224
        ),
        Family("densenet121", f"{_APPS}.DenseNet121", f"{_APPS}.densenet.preprocess_input", _TORCH, 224),
        Family("convnext_tiny", f"{_APPS}.ConvNeXtTiny", f"{_APPS}.convnext.preprocess_input", _INSIDE, 224),
        *(
            Family(
                f"efficientnet_lite{n}",
                f"pipeline.backbones.efficientnet_lite.EfficientNetLite{n}",
                "pipeline.backbones.efficientnet_lite.preprocess_input",
                _LITE,
                size,
                imagenet_file=f"pipeline.backbones.lite_weights.lite{n}_weights_file",
            )
            for n, size in ((0, 224), (1, 240), (2, 260))
        ),
        Family(
            "hub",
            "pipeline.backbones.hub.build_cut_model",
            "pipeline.backbones.hub.preprocess_input",
            "the preset's image converter",
            0,
            from_preset=True,
            default_weights="preset",
            hooks={
                "validate": "pipeline.backbones.presets.validate_spec",
                "input_size": "pipeline.backbones.presets.spec_input_size",
                "network_identity": "pipeline.backbones.presets.network_identity",
                "cut_points": "pipeline.backbones.hub.spec_cut_points",
            },
        ),
    )
}


# --------------------------------------------------------------------------- resizing

# How images reach a backbone's input size is part of what its features are (a store identity's
# `resize`): keras.applications families and the Lite ports take the pipeline's own bilinear stretch
# (tf.image.resize); a keras_hub preset brings its own in its image converter (interpolation, a centre
# crop to the aspect ratio, antialiasing), which extraction, fine-tuning and the exported model then all
# apply through keras.layers.Resizing, the layer the converter itself uses.
# Draws weights: none in numpy, the same network on every Keras backend (returns its scheme's name).
REINITIALIZE = "pipeline.backbones.random_init.reinitialize"
# Wraps a truncated model for `flip: average` (named by its dotted path too; it imports Keras).
FLIP_AVERAGED = "pipeline.backbones.flip.flip_averaged"
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5", "area")


@dataclass(frozen=True)
class Resize:
    """How images are resized to a backbone's input (the default: the pipeline's own bilinear stretch)."""

    interpolation: str = "bilinear"
    crop_to_aspect_ratio: bool = False
    pad_to_aspect_ratio: bool = False
    antialias: bool = False

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"resize interpolation must be one of {list(INTERPOLATIONS)}. Received: {self.interpolation!r}"
            )
        if self.crop_to_aspect_ratio and self.pad_to_aspect_ratio:
            raise ValueError("a resize crops or pads to the aspect ratio, not both")

    @property
    def is_default(self) -> bool:
        return self == Resize()

    def describe(self) -> str:
        """What the resize is, for provenance (stores made before presets record the default's text)."""
        if self.is_default:
            return "bilinear (tf.image.resize)"
        parts = [self.interpolation]
        if self.crop_to_aspect_ratio:
            parts.append("centre crop to the aspect ratio")
        if self.pad_to_aspect_ratio:
            parts.append("padded to the aspect ratio")
        if self.antialias:
            parts.append("antialiased")
        return ", ".join(parts) + " (keras.layers.Resizing, as the preset's image converter)"

    def layer(self, size: int, name: str = "resize"):
        """The ``keras.layers.Resizing`` to ``(size, size)`` that does this resize (also inside ``tf.data``)."""
        import keras

        return keras.layers.Resizing(size, size, name=name, **asdict(self))


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
    flip = getattr(spec, "flip", "none")
    if flip != "none" and fam.from_preset:
        raise ValueError(
            f"flip: {flip} mirrors maps back, which a preset's cut (a layer tower, tokens) does not give; "
            f"use flip: none with backbone {fam.name}. Received: flip={flip!r}"
        )
    if fam.hooks:
        import_dotted(fam.hooks["validate"])(spec)
        return
    if spec.preset is not None:
        raise ValueError(f"preset applies to backbone 'hub' only, not {fam.name}. Received: preset={spec.preset!r}")
    if spec.blocks != 1:
        raise ValueError(
            f"blocks (concatenating the last blocks' tokens) applies to backbone 'hub' only, not "
            f"{fam.name}. Received: blocks={spec.blocks}"
        )
    if isinstance(spec.cut, int):
        raise ValueError(
            f"a cut index counts the blocks of a preset (backbone 'hub'); {fam.name} is cut at a layer "
            f"name (`shoulders layers {fam.name}` lists them). Received: cut={spec.cut}"
        )
    weights = spec.weights
    if weights not in ("imagenet", "none"):
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"weights must be 'imagenet', 'none' or a path to a weights file. Received: "
                f"weights={weights!r}, which is not a file (relative paths are from the project root)"
            )
    size = input_size(spec)
    if size < fam.min_size:
        raise ValueError(f"{fam.name} needs an input size of at least {fam.min_size}. Received: size={size}")
    if spec.alpha is not None:
        if fam.alphas is None:
            raise ValueError(
                f"alpha applies to the MobileNet families only, not {fam.name}. Received: alpha={spec.alpha}"
            )
        if weights == "imagenet" and spec.alpha not in fam.alphas:
            raise ValueError(
                f"{fam.name} has ImageNet weights for alpha in {list(fam.alphas)}. Received: alpha={spec.alpha}"
            )


def preprocess_function(name: str) -> Callable:
    """The ``preprocess_input`` of family ``name`` (raw 0–255 RGB floats → the model's input)."""
    return import_dotted(family(name).preprocess)


def input_size(spec: Any) -> int:
    """The input side length a feature set runs at: its own ``size`` or the family default (a preset's: its own)."""
    fam = family(spec.backbone)
    if fam.hooks:
        return import_dotted(fam.hooks["input_size"])(spec)
    return spec.size if spec.size is not None else family(spec.backbone).default_size


def network_identity(spec: Any) -> dict | None:
    """What the backbone contributes to a store's identity, known without TensorFlow.

    Returns
    -------
    dict or None
        ``weights_sha256``, ``input_size``, ``preprocessing``, ``resize`` (and,
        for a preset, ``architecture`` and ``blocks``); ``None`` for a preset
        given by name, whose files only keras_hub can fetch.
    """
    fam = family(spec.backbone)
    if fam.hooks:
        return import_dotted(fam.hooks["network_identity"])(spec)
    return {
        "weights_sha256": weights_digest(spec),
        "input_size": input_size(spec),
        "preprocessing": fam.preprocessing,
        "resize": Resize().describe(),
    }


@dataclass(frozen=True)
class CutModel:
    """A truncated backbone ready for inference, and what describes it."""

    model: Any  # keras.Model from (size, size, 3) to the cut layer's output
    preprocess: Callable  # float RGB 0–255 → model input
    cut: str  # the layer's name
    cut_index: int  # its position in the base model (0 = input)
    n_layers: int  # layers in the base model
    provenance: dict
    resize: Resize = Resize()  # how images are resized to its input (a preset's: its converter's)


@dataclass(frozen=True)
class CutPoints:
    """Where a backbone can be cut: every name in order, the blocks a cut index counts, the last layer."""

    names: tuple[str, ...]
    blocks: tuple[str, ...] = ()
    last: str | None = None  # what cut: null means; None: the backbone has no single output


def resolve_cut(cut: Any, points: CutPoints, *, backbone: str, blocks: int = 1, listing: str = "") -> str:
    """The name a cut stands for: a name as given, a block index (negative: from the end), or null → the last.

    Raises
    ------
    ValueError
        Naming the valid choices (nearest names first, or the blocks for an index).
    """
    if cut is None:
        if points.last is None:
            raise ValueError(f"{backbone} has no single output: name a cut. " + _valid(None, points, listing))
        name = points.last
    elif isinstance(cut, int):
        if not points.blocks:
            raise ValueError(f"{backbone} has no blocks to count; name a layer. " + _valid(None, points, listing))
        n = len(points.blocks)
        if not -n <= cut < n:
            raise ValueError(
                f"{backbone} has {n} blocks (cut {-n} to {n - 1}): {', '.join(points.blocks)}. Received: cut={cut}"
            )
        name = points.blocks[cut]
    elif cut in points.names:
        name = cut
    else:
        raise ValueError(f"{backbone} has no layer {cut!r}. " + _valid(cut, points, listing))
    if blocks > 1 and (name not in points.blocks or points.blocks.index(name) < blocks - 1):
        raise ValueError(
            f"blocks: {blocks} concatenates the last {blocks} blocks up to the cut, so the cut must be "
            f"block {blocks - 1} or later of {', '.join(points.blocks) or '(none)'}. Received: cut={cut!r}"
        )
    return name


def _valid(cut: str | None, points: CutPoints, listing: str) -> str:
    names = _nearest(cut, list(points.names)) if cut is not None else list(points.names)
    blocks = f"Blocks (cut by index, -1 the last): {', '.join(points.blocks)}. " if points.blocks else ""
    return blocks + "Valid cuts, nearest first: " + ", ".join(names) + (f" ({listing} lists them)" if listing else "")


def build_cut_model(spec: Any, *, seed: int, policy: str | None = None) -> CutModel:
    """Build the backbone of a feature set and truncate it at its cut, once.

    Parameters
    ----------
    spec : FeatureSetParams
    seed : int
        Seeds the initialisation of ``weights: none`` so random features are
        reproducible.
    policy : str, optional
        Build under this Keras dtype policy (``mixed_float16``, ``mixed_bfloat16``:
        lower-precision compute, float32 variables); the global policy is restored afterwards.

    Returns
    -------
    CutModel
    """
    import keras

    validate_feature_set(spec)
    fam = family(spec.backbone)
    if fam.from_preset:
        return import_dotted(fam.factory)(spec, seed=seed, policy=policy)
    size = input_size(spec)
    weights, weights_sha = _resolve_weights(fam, spec)
    keras.utils.set_random_seed(seed)
    kwargs: dict[str, Any] = {"include_top": False, "weights": weights, "input_shape": (size, size, 3)}
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        base = import_dotted(fam.factory)(**kwargs)
    finally:
        keras.config.set_dtype_policy(previous)
    init = None
    if weights is None:
        # pipeline.backbones.random_init: named by its dotted path, as the factories are (no import cycle).
        init = import_dotted(REINITIALIZE)(base, seed)
    layer_names = [layer.name for layer in base.layers]
    cut = resolve_cut(spec.cut, CutPoints(names=tuple(layer_names), last=layer_names[-1]), backbone=fam.name)
    model = keras.Model(base.inputs, base.get_layer(cut).output, name=f"{fam.name}_{cut}")
    flip = getattr(spec, "flip", "none")
    if flip != "none":
        model = import_dotted(FLIP_AVERAGED)(model)
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
        "init": init,
        "resize": Resize().describe(),
        "flip": None if flip == "none" else flip,
    }
    return CutModel(
        model=model,
        preprocess=preprocess_function(fam.name),
        cut=cut,
        cut_index=provenance["cut_index"],
        n_layers=len(layer_names),
        provenance=provenance,
    )


def layer_names(spec: Any) -> list[str]:
    """Every cut of a feature set's backbone (built with ``weights=None``): its layer names (a preset's
    blocks first)."""
    return list(cut_points(spec).names)


def cut_points(spec: Any) -> CutPoints:
    """Where a feature set's backbone can be cut (built once without weights, then discarded)."""
    import keras

    fam = family(spec.backbone)
    if fam.hooks:
        points = import_dotted(fam.hooks["cut_points"])(spec)
        keras.backend.clear_session()
        return points
    names = tuple(name for name, _ in layer_shapes(spec))
    return CutPoints(names=names, last=names[-1])


def layer_shapes(spec: Any) -> list[tuple[str, tuple]]:
    """Every layer of a feature set's backbone (not a preset's; built once without weights, then discarded),
    in order, with its output shape for one image (the batch axis left out; ``()`` where a layer has several)."""
    import keras

    fam = family(spec.backbone)
    kwargs: dict[str, Any] = {"include_top": False, "weights": None, "input_shape": (input_size(spec),) * 2 + (3,)}
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    base = import_dotted(fam.factory)(**kwargs)
    shapes = []
    for layer in base.layers:
        output = layer.output
        shapes.append((layer.name, tuple(output.shape[1:]) if hasattr(output, "shape") else ()))
    del base
    keras.backend.clear_session()
    return shapes


def weights_digest(spec: Any) -> str | None:
    """sha256 of the weights file a feature set reads (None: random weights, or Keras' own ImageNet file).

    Needs no TensorFlow, so the identity of a feature set is known before any backbone is built.
    """
    fam = family(spec.backbone)
    if spec.weights == "none":
        return None
    if spec.weights == "imagenet":
        return None if fam.imagenet_file is None else file_sha256(import_dotted(fam.imagenet_file)())
    return file_sha256(Path(spec.weights))


def _resolve_weights(fam: Family, spec: Any) -> tuple[str | None, str | None]:
    weights = {"none": None, "imagenet": "imagenet"}.get(spec.weights, spec.weights)
    # Keras resolves (and, with a network, downloads) ImageNet weights it has no file of ours for.
    return weights, weights_digest(spec)


def import_dotted(dotted: str) -> Any:
    """The object a dotted path (``module.attribute``) names, its module imported now."""
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _nearest(name: str, choices: list[str]) -> list[str]:
    name = str(name)
    close = difflib.get_close_matches(name, choices, n=8, cutoff=0.4)
    return close + [c for c in choices if c not in close]


def _nearest_first(name: str, choices: Any) -> str:
    return "Valid backbones, nearest first: " + ", ".join(_nearest(name, sorted(choices)))


# What params validation needs from this registry (pipeline.config.schema): each family's default
# weights, and the check of a feature set, run when params.yaml is loaded.
for _family in FAMILIES.values():
    add_default_weights(_family.name, _family.default_weights)
add_check("features", validate_feature_set)
