"""Keras layers for the exact form of kernel SVMs: the kernel against the support vectors, the one-vs-one vote.

Importing this module registers them (package ``shoulders``), so a model that
holds them loads with ``keras.saving.load_model`` in safe mode — they are
plain layers with a config and weights, no Python code is deserialised.
:func:`pipeline.heads.conversion.svc_layers` builds them from a fitted
scikit-learn ``SVC``; :func:`pipeline.export.predict_command.load_model` imports this
module before loading.

- :class:`SupportVectorKernel` — ``k(x, sv)`` for every support vector, RBF
  (``exp(-γ‖x − sv‖²)``) or polynomial (``(γ x·sv + coef0)^degree``);
- :class:`OneVsOneVote` — libsvm's pairwise decisions turned into
  scikit-learn's one-vs-rest decision function (votes plus bounded confidences,
  as ``sklearn.utils.multiclass._ovr_decision_function`` computes them).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

KERNELS = ("rbf", "poly")


@keras.saving.register_keras_serializable(package="shoulders")
class SupportVectorKernel(keras.layers.Layer):
    """The kernel of an SVM between each input row and each support vector.

    Parameters
    ----------
    support_vectors : int
        How many support vectors the layer holds (its weight ``support_vectors``
        has shape (support_vectors, n_features), set after building).
    kernel : {'rbf', 'poly'}
    gamma : float
        The fitted γ (``SVC._gamma``: 'scale' and 'auto' resolved).
    coef0 : float
        The polynomial kernel's constant term.
    degree : int
        The polynomial kernel's degree.

    Input shape (n, n_features); output shape (n, support_vectors).
    """

    def __init__(
        self,
        support_vectors: int,
        kernel: str = "rbf",
        gamma: float = 1.0,
        coef0: float = 0.0,
        degree: int = 3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {list(KERNELS)}. Received: kernel={kernel!r}")
        self.n_support_vectors = int(support_vectors)
        self.kernel = kernel
        self.gamma = float(gamma)
        self.coef0 = float(coef0)
        self.degree = int(degree)

    def build(self, input_shape):
        self.support_vectors = self.add_weight(
            name="support_vectors",
            shape=(self.n_support_vectors, input_shape[-1]),
            initializer="zeros",
            trainable=False,
        )

    def call(self, x):
        dots = ops.matmul(x, ops.transpose(self.support_vectors))
        if self.kernel == "poly":
            return ops.power(self.gamma * dots + self.coef0, self.degree)
        # ‖x − sv‖² = ‖x‖² − 2 x·sv + ‖sv‖², clipped at 0 where rounding makes a tiny distance negative.
        squared = (
            ops.sum(ops.square(x), axis=1, keepdims=True)
            - 2.0 * dots
            + ops.expand_dims(ops.sum(ops.square(self.support_vectors), axis=1), 0)
        )
        return ops.exp(-self.gamma * ops.maximum(squared, 0.0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_support_vectors)

    def get_config(self):
        return {
            **super().get_config(),
            "support_vectors": self.n_support_vectors,
            "kernel": self.kernel,
            "gamma": self.gamma,
            "coef0": self.coef0,
            "degree": self.degree,
        }


def pairs(n_classes: int) -> list[tuple[int, int]]:
    """The class pairs (i, j), i < j, in libsvm's (and scikit-learn's) order of one-vs-one classifiers."""
    return [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]


@keras.saving.register_keras_serializable(package="shoulders")
class OneVsOneVote(keras.layers.Layer):
    """libsvm's pairwise decisions → scikit-learn's one-vs-rest decision function of an ``SVC``.

    For pair k = (i, j) a decision ≥ 0 is a vote for i, else for j; each class
    also sums its decisions' confidences (+d for i, −d for j), squashed into
    (−1/3, 1/3) so that they only break ties between equal votes.

    Input shape (n, n_classes·(n_classes−1)/2); output shape (n, n_classes).
    """

    def __init__(self, n_classes: int, **kwargs):
        super().__init__(**kwargs)
        if n_classes < 3:
            raise ValueError(f"OneVsOneVote needs at least 3 classes. Received: n_classes={n_classes}")
        self.n_classes = int(n_classes)
        first = np.zeros((len(pairs(self.n_classes)), self.n_classes), np.float32)
        second = np.zeros_like(first)
        for k, (i, j) in enumerate(pairs(self.n_classes)):
            first[k, i], second[k, j] = 1.0, 1.0
        self._first, self._second = first, second

    def call(self, decisions):
        first = ops.convert_to_tensor(self._first, dtype=decisions.dtype)
        second = ops.convert_to_tensor(self._second, dtype=decisions.dtype)
        wins = ops.cast(ops.greater_equal(decisions, 0.0), decisions.dtype)
        votes = ops.matmul(wins, first) + ops.matmul(1.0 - wins, second)
        confidences = ops.matmul(decisions, first - second)
        return votes + confidences / (3.0 * (ops.abs(confidences) + 1.0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_classes)

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}
