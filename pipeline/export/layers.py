"""Keras layers that exported models need beyond Keras' own, registered for loading.

Importing this module registers them (package ``shoulders``), so
``keras.saving.load_model`` reads an exported model in any process that has
the project installed — :func:`pipeline.export.predict_command.load_model` imports it first.

- :class:`ImagePreprocess` — a backbone family's own ``preprocess_input``
  (the caffe, tf and torch modes of keras.applications, Lite0's scaling);
- :class:`StoreRounding` — rounds the cut layer's map to the feature store's
  dtype, so the exported head sees what it was trained on;
- :class:`TokenPooling` — the token poolings (``cls``, ``mean``, ``cls+mean``) of a
  token summary;
- :func:`apply_pooling` — the poolings of :mod:`pipeline.store.pooling` as Keras layers;
- :class:`ColumnSlice` — an ensemble member's columns of the concatenated features
  (:mod:`pipeline.export.graph`: the ``features`` layer stays in the graph for the out-of-domain score);
- :class:`KthNearestDistance` — the out-of-domain score of ``ood.keras``: the cosine distance from
  an image's features to its k-th nearest training image's (:mod:`pipeline.export.ood`).

Importing it also registers :class:`pipeline.backbones.hub.TokenSummary`, which
a keras_hub preset's cut model holds (loading such a model needs keras_hub too),
and :class:`pipeline.backbones.flip.HorizontalMirror`, which a ``flip: average`` backbone holds.
"""

from __future__ import annotations

import keras
from keras import ops

from pipeline.backbones.flip import HorizontalMirror  # noqa: F401  (registered for loading)
from pipeline.backbones.hub import TokenSummary  # noqa: F401  (registered for loading)


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


@keras.saving.register_keras_serializable(package="shoulders")
class TokenPooling(keras.layers.Layer):
    """Pool a token summary ``(batch, 2 or 1, d)``: its class token, its patch mean, or both concatenated."""

    def __init__(self, pooling: str, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("cls", "mean", "cls+mean"):
            raise ValueError(f"token pooling must be one of ['cls', 'mean', 'cls+mean']. Received: {pooling!r}")
        self.pooling = pooling

    def call(self, summary):
        if self.pooling == "cls":
            return summary[:, 0, :]
        if self.pooling == "mean":
            return summary[:, -1, :]
        return ops.reshape(summary, (-1, summary.shape[1] * summary.shape[2]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2] if self.pooling == "cls+mean" else input_shape[2])

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling}


@keras.saving.register_keras_serializable(package="shoulders")
class KthNearestDistance(keras.layers.Layer):
    """Cosine similarities to the training images ``(batch, n_train)`` → distance to the ``k``-th nearest."""

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be an integer >= 1. Received: {k!r}")
        self.k = k

    def call(self, similarities):
        nearest, _ = ops.top_k(similarities, self.k)
        return 1.0 - nearest[:, self.k - 1]

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="shoulders")
class ColumnSlice(keras.layers.Layer):
    """Columns ``start:stop`` of ``(batch, n)`` features: an ensemble member's part of the concatenated features."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= start < stop:
            raise ValueError(f"a column slice needs 0 <= start < stop. Received: start={start!r}, stop={stop!r}")
        self.start, self.stop = int(start), int(stop)

    def call(self, features):
        return features[:, self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


# One Keras form per name of pipeline.store.pooling (tests/test_export.py checks that both pool alike);
# each takes the suffix that keeps its layer's name unique in a graph of several branches.
_POOLING_LAYERS = {
    "cls": lambda x, s: TokenPooling("cls", name=f"cls_pool{s}")(x),
    "mean": lambda x, s: TokenPooling("mean", name=f"mean_pool{s}")(x),
    "cls+mean": lambda x, s: TokenPooling("cls+mean", name=f"cls_mean_pool{s}")(x),
    "avg": lambda x, s: keras.layers.GlobalAveragePooling2D(name=f"avg_pool{s}")(x),
    "max": lambda x, s: keras.layers.GlobalMaxPooling2D(name=f"max_pool{s}")(x),
    "flatten": lambda x, s: keras.layers.Flatten(name=f"flatten{s}")(x),
    "avgmax": lambda x, s: keras.layers.Concatenate(name=f"avgmax_pool{s}")(
        [keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)]
    ),
}


def apply_pooling(x, pooling: str, suffix: str = ""):
    """Pool a map or token-summary tensor the way :func:`pipeline.store.pooling.pool` pools stored rows.

    ``suffix`` ends the pooling layer's name (``avg_pool_lite0_top``): one per branch of a graph.
    """
    from pipeline.store.pooling import applies

    if pooling not in _POOLING_LAYERS:
        raise ValueError(f"pooling must be one of {list(_POOLING_LAYERS)}. Received: {pooling!r}")
    if not applies(pooling, tuple(x.shape[1:])):
        raise ValueError(f"pooling {pooling!r} does not apply to a tensor of shape {tuple(x.shape[1:])}")
    return _POOLING_LAYERS[pooling](x, suffix)
