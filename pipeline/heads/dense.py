"""The dense head as a scikit-learn classifier: JAX trains it, numpy predicts with it, Keras exports it.

:class:`DenseHead` is ``[Dense(relu) → Dropout] → Dense(softmax)`` trained on
arrays already in memory by :mod:`pipeline.heads.dense_training` — the same
compiled program that trains a sweep's dense variants and folds together, with
one member — so a head fitted alone and one fitted in a batch are the same
head. Two choices keep it cheap:

* Training is one ``jax.jit``-compiled program per shape (epochs of shuffled
  mini-batches, Adam, dropout, weight decay and early stopping in one
  ``while_loop``), on the CPU or a GPU: no per-step Python, no Keras tracing.
* The fitted state is plain numpy (``coefs_``, ``intercepts_``): predicting,
  pickling and unpickling need neither JAX nor TensorFlow, so the evaluate stage and the
  ``.joblib`` files load in milliseconds. ``model_`` builds an equivalent
  Keras model on demand (same layer names and weights) for conversion or export.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

log = logging.getLogger(__name__)

# keras.config.epsilon(): Keras clips probabilities to [ε, 1 - ε] before taking their log.
_KERAS_EPSILON = 1e-7


class DenseHead(ClassifierMixin, BaseEstimator):
    """A Keras dense head — [Dense(relu) → Dropout] → Dense(softmax) — as a scikit-learn classifier.

    Parameters
    ----------
    hidden_units : int
        Width of the hidden layer; 0 for none (softmax regression).
    dropout : float
        Dropout rate after the hidden layer (or on the input if there is none).
    weight_decay : float
        L2 penalty on the kernels: ``weight_decay · Σ w²`` of every kernel (not
        the biases) is added to the training loss. 0 for none.
    learning_rate : float
        Adam's learning rate.
    epochs : int
        Maximum epochs; early stopping usually ends sooner.
    batch_size : int
    patience : int
        Epochs without improvement of the validation loss before stopping; the
        best weights are restored. 0 trains all ``epochs`` on all the data.
    validation_fraction : float
        Share of the training data held out (stratified) for early stopping.
    random_state : int
        Seeds the initialisation, dropout, shuffling and the held-out split.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coefs_ : list of ndarray
        Kernels, ``(n_features, hidden_units)`` then ``(hidden_units, n_classes)``
        (just ``(n_features, n_classes)`` without a hidden layer), float32.
    intercepts_ : list of ndarray
        Biases, ``(hidden_units,)`` then ``(n_classes,)``.
    n_epochs_ : int
        Epochs actually run.
    loss_curve_ : list of float
        Training cross-entropy per epoch (the weight penalty left out).
    model_ : keras.Model
        An inference model with the fitted weights, built on first access
        (imports Keras); not pickled.
    """

    def __init__(
        self,
        hidden_units=256,
        dropout=0.5,
        learning_rate=1e-3,
        epochs=60,
        batch_size=64,
        patience=8,
        validation_fraction=0.15,
        random_state=0,
        weight_decay=0.0,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X, y):
        """Train on ``X`` of shape (n_samples, n_features) and labels ``y`` of shape (n_samples,).

        ``X`` may also hold views, shape (n_samples, n_views, n_features): each
        epoch then sees one view of every image, drawn afresh (seeded); early
        stopping holds out images, scored on their first view (the clean one).

        Returns
        -------
        self
        """
        from pipeline.heads.dense_training import prepared_member, train_members

        X, views, encoded = self._validate_training(X, y)
        if views is None:
            train_members([prepared_member(self, 0, encoded)], [X])
        else:
            # View v of row i at v · n + i (view 0 is the clean one, which early stopping reads).
            flat = np.ascontiguousarray(np.swapaxes(views, 0, 1)).reshape(-1, views.shape[-1])
            train_members([prepared_member(self, 0, encoded, views=views.shape[1])], [flat])
        return self

    def _validate_training(self, X, y) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Check the training data and settings, set ``classes_``; return the clean rows, the views and the codes.

        The clean rows have shape (n_samples, n_features); the views are
        (n_samples, n_views, n_features) or None; codes index ``classes_``.
        """
        views = None
        if getattr(X, "ndim", None) == 3:
            views = np.asarray(X, dtype=np.float32)
            X = views[:, 0]
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"DenseHead needs at least 2 classes; got one class: {self.classes_.tolist()}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"DenseHead needs epochs >= 1 and batch_size >= 1. "
                f"Received: epochs={self.epochs}, batch_size={self.batch_size}"
            )
        if not self.weight_decay >= 0:
            raise ValueError(f"DenseHead needs weight_decay >= 0. Received: weight_decay={self.weight_decay}")
        return X, views, encoded

    def held_out_rows(self, encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The rows trained on and the rows held out for early stopping (None: no early stopping).

        Rows are held out (stratified, seeded) when ``patience`` > 0 and every
        class can spare one; ``encoded`` of shape (n_samples,) holds class codes.
        """
        rows = np.arange(len(encoded))
        n_held = int(round(self.validation_fraction * len(encoded)))
        n_classes = int(encoded.max()) + 1
        if self.patience and np.bincount(encoded).min() >= 2 and n_held >= n_classes:
            fit_rows, held_rows = train_test_split(
                rows, test_size=n_held, stratify=encoded, random_state=self.random_state
            )
            return fit_rows, held_rows
        return rows, None

    @property
    def model_(self):
        """The fitted head as a Keras model (built from ``coefs_`` on first access)."""
        if "coefs_" not in vars(self):
            raise AttributeError("model_ exists once the DenseHead is fitted")
        model = vars(self).get("_keras_model")
        if model is None:
            model = network_with_weights(
                self.coefs_, self.intercepts_, hidden_units=self.hidden_units, dropout=self.dropout
            )
            self._keras_model = model
        return model

    def __getstate__(self):
        # The Keras model would make every unpickling import TensorFlow; the numpy weights suffice.
        state = dict(super().__getstate__())
        state.pop("_keras_model", None)
        return state

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order.

        Computed in numpy from ``coefs_`` and ``intercepts_`` (dropout is off at
        inference), in float32 like the Keras model.
        """
        check_is_fitted(self, "coefs_")
        return forward_probabilities(
            validate_data(self, X, dtype=np.float32, reset=False), self.coefs_, self.intercepts_
        )

    def predict(self, X):
        """Predicted labels, shape (n_samples,)."""
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]


def build_network(n_features: int, n_classes: int, *, hidden_units: int, dropout: float, weight_decay: float = 0.0):
    """The dense head's Keras network: ``[Dense(relu) "hidden"] → [Dropout] → Dense(softmax) "probabilities"``."""
    import keras

    layers = [
        keras.Input((n_features,)),
        *network_layers(n_classes, hidden_units=hidden_units, dropout=dropout, weight_decay=weight_decay),
    ]
    return keras.Sequential(layers, name="dense_head")


def network_layers(
    n_classes: int, *, hidden_units: int, dropout: float, prefix: str = "", weight_decay: float = 0.0
) -> list[Any]:
    """The head's layers, made in one fixed order: ``[hidden] → [dropout] → probabilities``, names prefixed.

    ``weight_decay`` > 0 puts an L2 penalty (``keras.regularizers.L2``) on both kernels. The
    exported model (:attr:`DenseHead.model_`) and the out-of-core head
    (:mod:`pipeline.heads.streaming`) are made of these layers.
    """
    import keras

    penalty = keras.regularizers.L2(weight_decay) if weight_decay else None
    layers: list[Any] = []
    if hidden_units:
        layers.append(
            keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=penalty, name=f"{prefix}hidden")
        )
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name=f"{prefix}dropout"))
    layers.append(
        keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=penalty, name=f"{prefix}probabilities")
    )
    return layers


def network_weights(model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The kernels and biases of a network from :func:`build_network`, as float32 numpy arrays."""
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return (
        [np.asarray(layer.kernel, np.float32) for layer in dense],
        [np.asarray(layer.bias, np.float32) for layer in dense],
    )


def network_with_weights(
    coefs: Sequence[np.ndarray], intercepts: Sequence[np.ndarray], *, hidden_units: int, dropout: float
):
    """Rebuild the Keras network of fitted weights (same layer names), for conversion or export."""
    model = build_network(coefs[0].shape[0], coefs[-1].shape[1], hidden_units=hidden_units, dropout=dropout)
    dense = [layer for layer in model.layers if layer.name in ("hidden", "probabilities")]
    for layer, kernel, bias in zip(dense, coefs, intercepts):
        layer.set_weights([kernel, bias])
    return model


def forward_probabilities(X: np.ndarray, coefs: Sequence[np.ndarray], intercepts: Sequence[np.ndarray]) -> np.ndarray:
    """The network's probabilities in numpy: ReLU between layers, softmax last (dropout is off at inference)."""
    activations = np.asarray(X, np.float32)
    for index, (kernel, bias) in enumerate(zip(coefs, intercepts)):
        activations = activations @ kernel + bias
        if index < len(coefs) - 1:
            np.maximum(activations, 0.0, out=activations)
    activations -= activations.max(axis=1, keepdims=True)
    np.exp(activations, out=activations)
    activations /= activations.sum(axis=1, keepdims=True)
    return activations


def held_out_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of held-out rows, as Keras computes ``sparse_categorical_crossentropy`` on probabilities.

    Probabilities of shape (n_samples, n_classes) are clipped to
    ``[ε, 1 - ε]`` (Keras' ``epsilon()``, 1e-7) and the mean of ``-log p[label]``
    is taken in float32: what early stopping reads after every epoch
    (:mod:`pipeline.heads.dense_training` computes the same inside its program).
    """
    epsilon = np.float32(_KERAS_EPSILON)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], epsilon, np.float32(1) - epsilon)
    return float(np.mean(-np.log(picked, dtype=np.float32), dtype=np.float32))
