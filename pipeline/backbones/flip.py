"""Horizontal-flip averaging of a truncated backbone: the map of an image and of its mirror, mirrored back, averaged.

A feature set with ``flip: average`` stores, for every image ``x``,
``(f(x) + mirror(f(mirror(x)))) / 2``, where ``f`` is the truncated backbone and
``mirror`` reverses the width axis. Mirroring the second map back aligns it
with the first, position by position, so the stored map is still a map
(``heads.pooling`` stays lazy, applied when the store is read) and its pooled
features are those of the image and of its mirror averaged: a classifier
trained on them sees no difference between an image and its mirror. The
wrapping is one Keras model (:func:`flip_averaged`), so extraction on every
runtime, the augmented views and the exported model compute the same thing;
:class:`HorizontalMirror` is registered for loading an exported model in safe
mode. Preprocessing of every family here is per pixel, so mirroring the
preprocessed image is mirroring the image.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

#: The values of a feature set's ``flip``: ``none`` (the image alone), ``average`` (see the module docstring).
FLIPS = ("none", "average")


@keras.saving.register_keras_serializable(package="shoulders")
class HorizontalMirror(keras.layers.Layer):
    """Reverse the width axis of images or maps ``(batch, height, width, channels)``; pass vectors through.

    A vector per image (a cut after global pooling) has no width: it is the
    same for an image whatever way round its map was.
    """

    def call(self, x):
        if len(x.shape) == 4:
            return ops.flip(x, axis=2)
        return x


def flip_averaged(model: Any) -> Any:
    """``model`` (images → a map, or a vector) as a model of the mean of an image's output and its mirror's.

    Parameters
    ----------
    model : keras.Model
        A truncated backbone from ``(size, size, 3)`` preprocessed images to one output of rank 2 or 4.

    Returns
    -------
    keras.Model
        The same input and output shapes; ``model`` is run twice (shared weights).

    Raises
    ------
    ValueError
        If the output is a token sequence (rank 3), which has no width axis to mirror back.
    """
    if len(model.outputs) != 1 or len(model.output.shape) not in (2, 4):
        raise ValueError(
            "flip: average needs a cut whose output is one map (batch, height, width, channels) or one vector; "
            f"Received: outputs of shape {[tuple(o.shape) for o in model.outputs]}"
        )
    inputs = keras.Input(model.input_shape[1:], name="image")
    plain = model(inputs)
    mirrored = model(HorizontalMirror(name="mirror_image")(inputs))
    back = HorizontalMirror(name="mirror_back")(mirrored)
    averaged = keras.layers.Average(name="flip_average")([plain, back])
    return keras.Model(inputs, averaged, name=f"{model.name}_flip_average")
