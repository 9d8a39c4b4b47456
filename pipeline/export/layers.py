"""Keras layers that exported models need beyond Keras' own, registered for loading.

Importing this module registers them (package ``shoulders``), so
``keras.saving.load_model`` reads an exported model in any process that has
the project installed — :func:`pipeline.export.predict.load_model` imports it first.

- :class:`ImagePreprocess` — a backbone family's own ``preprocess_input``
  (the caffe, tf and torch modes of keras.applications, Lite0's scaling);
- :class:`StoreRounding` — rounds the cut layer's map to the feature store's
  dtype, so the exported head sees what it was trained on;
- :func:`apply_pooling` — the poolings of :mod:`pipeline.store.pooling` as Keras layers.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="shoulders")
class ImagePreprocess(keras.layers.Layer):
    """Apply the preprocessing of backbone ``family`` to 0–255 RGB floats."""

    def __init__(self, family: str, **kwargs):
        super().__init__(**kwargs)
        from pipeline.backbones import preprocess_function

        self.family = family
        self._preprocess = preprocess_function(family)

    def call(self, images):
        return self._preprocess(ops.cast(images, "float32"))

    def get_config(self):
        return {**super().get_config(), "family": self.family}


@keras.saving.register_keras_serializable(package="shoulders")
class StoreRounding(keras.layers.Layer):
    """Round to ``dtype`` and back to float32, as storing the features in the cache did."""

    def __init__(self, dtype_name: str = "float16", **kwargs):
        super().__init__(**kwargs)
        self.dtype_name = dtype_name

    def call(self, x):
        return ops.cast(ops.cast(x, self.dtype_name), "float32")

    def get_config(self):
        return {**super().get_config(), "dtype_name": self.dtype_name}


# One Keras form per name of pipeline.store.pooling (tests/test_export.py checks that both pool alike).
_POOLING_LAYERS = {
    "avg": lambda x: keras.layers.GlobalAveragePooling2D(name="avg_pool")(x),
    "max": lambda x: keras.layers.GlobalMaxPooling2D(name="max_pool")(x),
    "flatten": lambda x: keras.layers.Flatten(name="flatten")(x),
    "avgmax": lambda x: keras.layers.Concatenate(name="avgmax_pool")(
        [keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)]),
}


def apply_pooling(x, pooling: str):
    """Pool a map tensor the way :func:`pipeline.store.pooling.pool` pools stored maps."""
    if pooling not in _POOLING_LAYERS:
        raise ValueError(f"pooling must be one of {list(_POOLING_LAYERS)}. Received: {pooling!r}")
    return _POOLING_LAYERS[pooling](x)
