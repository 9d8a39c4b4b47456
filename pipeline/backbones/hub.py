"""keras_hub backbones: a preset loaded once, its blocks and layers as cuts, ViT-like tokens summarised.

The family ``hub`` of the registry (:mod:`pipeline.backbones.registry`) builds
from a keras_hub preset (:mod:`pipeline.backbones.presets` reads and checks it
without Keras). The model a cut gives takes raw 0–255 RGB at the preset's size
and starts with the preset's own image converter scaling (``x * scale +
offset`` per channel, a ``keras.layers.Rescaling``), so extraction, the
exported model and fine-tuning cannot apply another; the converter's resize is
the :class:`~pipeline.backbones.resizing.Resize` every image pipeline uses.

Cuts. A preset's *blocks* are what a cut index counts (``cut: -1`` is the last
block): the transformer blocks of a ViT, DINOv2/v3 (``stem``, ``stage1``…, its
feature pyramid), SigLIP and CLIP vision towers, or the pyramid levels
(``P2``…``P5``) of a convolutional preset (ResNet, EfficientNet, …). Every
single-output layer of the backbone is a cut by name as well; ``cut: null`` is
the backbone's output. A dual-tower preset (CLIP, SigLIP) contributes its
image tower.

Tokens. A cut whose output is a token sequence ``(batch, tokens, dim)`` is
stored as its summary (:class:`TokenSummary`): the class token and the mean of
the patch tokens (register and distillation tokens left out) — ``(2, dim)`` per
image, or ``(1, dim)``, the mean alone, for a backbone without a class token
(SigLIP). With ``blocks: k`` the summaries of the k blocks ending at the cut are
concatenated along the features: ``(2, k·dim)``. The token poolings ``cls``,
``mean`` and ``cls+mean`` then read it (:mod:`pipeline.store.pooling`), like
``avg`` reads a map: sweeping them costs no backbone pass, and the store holds
2k·dim values per image instead of every token of k blocks. Where the class
token and the patches are is the architecture's (:data:`TOKEN_LAYOUTS`); a
token cut of another architecture is refused rather than guessed.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from pipeline.backbones.presets import PresetInfo, require_keras_hub, resolve_preset
from pipeline.backbones.random_init import reinitialize
from pipeline.backbones.registry import CutModel, CutPoints, resolve_cut

# Where the class token is and how many tokens come before the patches, per token architecture
# (read off each class's embedding layer in keras_hub: [CLS, registers…, patches…]).
TOKEN_LAYOUTS = {
    "ViTBackbone": lambda m: (bool(m.use_class_token), int(bool(m.use_class_token))),
    "DINOV2Backbone": lambda m: (True, 1 + int(m.num_register_tokens)),
    "DINOV3Backbone": lambda m: (True, 1 + int(m.num_register_tokens)),
    "CLIPVisionEncoder": lambda m: (True, 1),
    "SigLIPVisionEncoder": lambda m: (False, 0),
}


@keras.saving.register_keras_serializable(package="shoulders")
class TokenSummary(keras.layers.Layer):
    """A token sequence ``(batch, tokens, dim)`` → ``(batch, 2, dim)``: [class token, mean of patch tokens].

    Without a class token, ``(batch, 1, dim)``: the mean of the patch tokens.
    ``prefix_tokens`` tokens (class, registers) come before the patches.
    """

    def __init__(self, class_token: bool, prefix_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.class_token = bool(class_token)
        self.prefix_tokens = int(prefix_tokens)

    def call(self, tokens):
        tokens = ops.cast(tokens, "float32")
        patches = ops.mean(tokens[:, self.prefix_tokens :, :], axis=1, keepdims=True)
        return ops.concatenate([tokens[:, :1, :], patches], axis=1) if self.class_token else patches

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 if self.class_token else 1, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "class_token": self.class_token, "prefix_tokens": self.prefix_tokens}


def preprocess_input(x):
    """The family's preprocessing outside the model: none (the preset's scaling is the model's first layer)."""
    return ops.cast(x, "float32")


def load_image_tower(info: PresetInfo, *, weights: bool, policy: str | None = None):
    """The preset's backbone (its image tower, for CLIP/SigLIP), built from its directory."""
    require_keras_hub()
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(
        str(info.directory), load_weights=weights, **({"dtype": policy} if policy else {})
    )
    tower = getattr(backbone, "vision_encoder", backbone)
    inputs = tower.inputs
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[-1] != 3:
        raise ValueError(
            f"preset {info.directory} ({info.class_name}) does not take one batch of RGB images "
            f"(inputs {[tuple(i.shape) for i in inputs]}); only image backbones can be cut"
        )
    return tower


def cut_points(tower) -> tuple[CutPoints, dict[str, Any]]:
    """The cuts of an image tower: its blocks (in order), then every layer with one tensor output.

    Returns
    -------
    points : CutPoints
    tensors : dict of name to KerasTensor
    """
    blocks = _blocks(tower)
    tensors = dict(blocks)
    for layer in tower.layers:
        try:
            output = layer.output
        except (AttributeError, ValueError):  # a layer called more than once has no single output: no cut
            continue
        if isinstance(output, keras.KerasTensor) and layer.name not in tensors:
            tensors[layer.name] = output
    outputs = tower.outputs
    last = next((name for name, tensor in tensors.items() if len(outputs) == 1 and tensor is outputs[0]), None)
    return CutPoints(names=tuple(tensors), blocks=tuple(name for name, _ in blocks), last=last), tensors


def spec_cut_points(spec: Any) -> CutPoints:
    """Where a ``hub`` feature set's preset can be cut (built without weights; the registry's hook)."""
    points, _ = cut_points(load_image_tower(resolve_preset(spec.preset), weights=False))
    return points


def _blocks(tower) -> list[tuple[str, Any]]:
    if type(tower).__name__ == "ViTBackbone":
        # Its encoder is one layer; call its blocks on the patch embedding to expose each block's output
        # (the same layers and weights; the encoder's last block is followed by its layer norm).
        encoder = tower.get_layer("vit_encoder")
        x = encoder.dropout(tower.get_layer("vit_patching_and_embedding").output)
        blocks = []
        for block in encoder.encoder_layers:
            x = block(x)
            blocks.append((block.name, x))
        return blocks
    pyramid = getattr(tower, "pyramid_outputs", None)
    if pyramid:
        return list(pyramid.items())
    return [(layer.name, layer.output) for layer in getattr(tower, "encoder_layers", [])]


@keras.saving.register_keras_serializable(package="shoulders")
class PresetCut(keras.layers.Layer):
    """A keras_hub image tower cut at one of its cuts (tokens summarised), after the preset's own scaling.

    Saved as the tower's serialised config (the form ``save_to_preset`` writes,
    which keras_hub reads back) plus the cut, not as the graph of the tower's
    inner layers, which keras_hub does not promise to deserialise.

    Parameters
    ----------
    tower : keras_hub Backbone or its serialised config
    cut : str
        A name of :func:`cut_points`.
    blocks : int
        How many blocks up to the cut have their token summaries concatenated.
    scale, offset : sequence of 3 floats
        The image converter's, applied to 0–255 RGB first.
    """

    def __init__(self, tower, cut: str, blocks: int, scale, offset, **kwargs):
        super().__init__(**kwargs)
        if isinstance(tower, dict):
            tower = keras.saving.deserialize_keras_object(tower)
        self.tower_config = keras.saving.serialize_keras_object(tower)
        self.cut, self.blocks = cut, int(blocks)
        self.scale, self.offset = [float(v) for v in scale], [float(v) for v in offset]
        points, tensors = cut_points(tower)
        output, self.tokens = _cut_output(tower, points, tensors, cut, self.blocks, where=tower.name)
        self.truncated = keras.Model(tower.inputs, output, name=f"{type(tower).__name__}_{cut}")
        self.rescale = keras.layers.Rescaling(self.scale, self.offset, name="image_converter")

    def build(self, input_shape):
        self.rescale.build(input_shape)  # the tower was built with its graph
        self.built = True

    def call(self, images):
        return self.truncated(self.rescale(images))

    def get_config(self):
        return {
            **super().get_config(),
            "tower": self.tower_config,
            "cut": self.cut,
            "blocks": self.blocks,
            "scale": self.scale,
            "offset": self.offset,
        }


def build_cut_model(spec: Any, *, seed: int, policy: str | None = None) -> CutModel:
    """Build the preset's image tower, cut it, and put the converter's scaling in front, once.

    Parameters
    ----------
    spec : FeatureSetParams
        ``preset``, ``weights`` (``preset`` or ``none``), ``cut`` (a name or a block index) and ``blocks``.
    seed : int
        Seeds ``weights: none``.
    policy : str, optional
        A Keras dtype policy for the tower (``mixed_float16``, ``mixed_bfloat16``).

    Returns
    -------
    CutModel
        ``model`` maps (batch, size, size, 3) raw 0–255 RGB to the cut's output: a map
        (batch, h, w, c), a vector (batch, c) or a token summary (batch, 1 or 2, blocks·dim).
    """
    info = resolve_preset(spec.preset)
    converter = info.converter
    keras.utils.set_random_seed(seed)
    tower = load_image_tower(info, weights=spec.weights == "preset", policy=policy)
    init = reinitialize(tower, seed) if spec.weights == "none" else None
    points, _ = cut_points(tower)
    cut = resolve_cut(
        spec.cut,
        points,
        backbone=f"preset {spec.preset}",
        blocks=spec.blocks,
        listing=f"`shoulders layers hub --preset {spec.preset}`",
    )
    images = keras.Input((converter.size, converter.size, 3), name="image")
    layer = PresetCut(tower, cut, spec.blocks, converter.scale, converter.offset, name="preset_cut")
    model = keras.Model(images, layer(images), name=f"hub_{cut}")
    provenance = {
        "backbone": "hub",
        "weights": spec.weights,
        "weights_sha256": info.weights_sha256() if spec.weights == "preset" else None,
        "cut": cut,
        "cut_index": points.names.index(cut),
        "n_layers": len(points.names),
        "input_size": converter.size,
        "alpha": None,
        "preprocessing": converter.describe(),
        "seed": seed if spec.weights == "none" else None,
        "init": init,
        "resize": converter.resize.describe(),
        "preset": spec.preset,
        "architecture": info.architecture,
        "blocks": spec.blocks,
        "tokens": layer.tokens,
    }
    return CutModel(
        model=model,
        preprocess=preprocess_input,
        cut=cut,
        cut_index=provenance["cut_index"],
        n_layers=len(points.names),
        provenance=provenance,
        resize=converter.resize,
    )


def _cut_output(tower, points: CutPoints, tensors: dict, cut: str, blocks: int, *, where: str):
    """The tensor a cut gives, token sequences summarised; and what the summary is (None for maps, vectors)."""
    rank = len(tensors[cut].shape)
    if rank != 3:
        if blocks != 1:
            raise ValueError(
                f"preset {where}: blocks: {blocks} concatenates token outputs, but cut {cut!r} gives "
                f"shape {tuple(tensors[cut].shape[1:])}; use blocks: 1"
            )
        return tensors[cut], None
    layout = TOKEN_LAYOUTS.get(type(tower).__name__)
    if layout is None:
        raise ValueError(
            f"preset {where}: cut {cut!r} gives tokens {tuple(tensors[cut].shape[1:])}, but shoulders "
            f"does not know where the class and patch tokens of a {type(tower).__name__} are "
            f"(known: {', '.join(TOKEN_LAYOUTS)}); cut at a layer that gives a map or a vector"
        )
    class_token, prefix = layout(tower)
    names = [cut]
    if blocks > 1:
        index = points.blocks.index(cut)  # resolve_cut made sure it is a block with blocks - 1 before it
        names = list(points.blocks[index - blocks + 1 : index + 1])
    summaries = [TokenSummary(class_token, prefix, name=f"tokens_{name}")(tensors[name]) for name in names]
    output = summaries[0] if len(summaries) == 1 else keras.layers.Concatenate(axis=-1, name="last_blocks")(summaries)
    what = "class token, mean of patch tokens" if class_token else "mean of patch tokens (no class token)"
    return output, f"{what}; {prefix} token(s) before the patches; blocks {', '.join(names)}"


def describe_cuts(spec: Any) -> list[str]:
    """Lines for ``shoulders layers hub --preset``: every block (index and from the end) and layer, with shapes."""
    info = resolve_preset(spec.preset)
    tower = load_image_tower(info, weights=False)
    points, tensors = cut_points(tower)
    lines = [
        f"preset {spec.preset}: {info.class_name}, input {info.converter.size} px, "
        f"{info.converter.describe()}; resize {info.converter.resize.describe()}",
        f"blocks ({len(points.blocks)}; cut: <index> counts them, -1 is the last):",
    ]
    n = len(points.blocks)
    for i, name in enumerate(points.blocks):
        lines.append(f"  {i:>3} {i - n:>4}  {name:<32} {_shape(tensors[name])}")
    lines.append("layers (cut: <name>; cut: null is the last" + (f", {points.last}" if points.last else "") + "):")
    lines += [f"           {name:<32} {_shape(tensors[name])}" for name in points.names if name not in points.blocks]
    return lines


def _shape(tensor) -> str:
    shape = tuple(tensor.shape[1:])
    kind = {1: "vector", 2: "tokens", 3: "map"}.get(len(shape), "")
    return f"{shape} {kind}"
