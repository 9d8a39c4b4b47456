"""Seeded image augmentation with Keras preprocessing layers, reproducible per image.

Keras' random layers draw from a seed generator whose state advances with
every call, so their output depends on what ran before and on the other
images of the batch. The augment stage must give the same view of an image
whether it runs at once, after a crash, when more views are added later or
when the dataset around it changes; so each image is augmented on its own,
every layer's generator first reset to a state derived from (seed, view, the
image's content hash) (:func:`view_seed`).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Union

OpValue = Union[float, str]

# Augmentation op → the keras layer that does it, built from the op's factor.
OPS = ("flip", "rotation", "zoom", "translation", "contrast")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def validate_ops(ops: Mapping[str, OpValue], *, where: str = "extract.augment.ops") -> None:
    """Check op names and factors, naming the bad one and the valid choices.

    Raises
    ------
    ValueError
    """
    for name, value in ops.items():
        if name not in OPS:
            raise ValueError(f"{where}: unknown op {name!r}. Valid ops: {', '.join(OPS)}")
        if name == "flip":
            if value not in FLIP_MODES:
                raise ValueError(f"{where}.flip must be one of {list(FLIP_MODES)}. Received: {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{where}.{name} is a factor in (0, 1) (a fraction of a turn, of the size, or of "
                             f"the contrast). Received: {value!r}")


def build_layers(ops: Mapping[str, OpValue]) -> list:
    """The Keras preprocessing layers for ``ops``, in a fixed order (flip, rotation, zoom, translation, contrast)."""
    import keras

    validate_ops(ops)
    factories = {
        "flip": lambda v: keras.layers.RandomFlip(v),
        "rotation": lambda v: keras.layers.RandomRotation(v, fill_mode="reflect"),
        "zoom": lambda v: keras.layers.RandomZoom(v, fill_mode="reflect"),
        "translation": lambda v: keras.layers.RandomTranslation(v, v, fill_mode="reflect"),
        "contrast": lambda v: keras.layers.RandomContrast(v, value_range=(0, 255)),
    }
    return [factories[name](ops[name]) for name in OPS if name in ops]


def view_seed(seed: int, view: int, sha256: str) -> int:
    """A 31-bit seed for one view of one image: stable across runs, resumes, view counts and datasets."""
    digest = hashlib.sha256(f"{seed}/{view}/{sha256}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def augment(layers: list, batch, seeds):
    """Apply ``layers`` to each 0–255 float image of a batch, seeded by its own seed only.

    Parameters
    ----------
    layers : list of keras layers
        From :func:`build_layers`.
    batch : tensor of shape (n, size, size, 3)
    seeds : int tensor of shape (n,)
        From :func:`view_seed`; a tensor inside a ``tf.function``, so new seeds do not retrace it.

    Returns
    -------
    tensor of shape (n, size, size, 3), values clipped to 0–255
    """
    import tensorflow as tf

    def one(args):
        image, seed = args
        image = image[None]
        for index, layer in enumerate(layers):
            dtype = layer.generator.state.dtype
            layer.generator.state.assign(tf.stack([tf.cast(seed, dtype), tf.constant(index, dtype)]))
            image = layer(image, training=True)
        return image[0]

    # One image after the other: each layer's generator is reset for every image.
    out = tf.map_fn(one, (batch, seeds), fn_output_signature=tf.float32, parallel_iterations=1)
    return tf.clip_by_value(out, 0.0, 255.0)
