"""Heads for feature sets larger than memory: trained chunk by chunk from dask arrays.

``open_feature_set(..., as_dask=True)`` gives the pooled features as a dask
array aligned with the store's chunks; nothing is read until a block is asked
for. The heads here never hold more than one block:

- :class:`StreamingLinearHead` — logistic regression (``loss="log_loss"``) or a
  linear SVM (``loss="hinge"``) by ``SGDClassifier.partial_fit``, after a first
  pass that fits the standardisation with ``StandardScaler.partial_fit``;
- :class:`StreamingDenseHead` — the network of :class:`pipeline.heads.dense.DenseHead`
  fed by a generator that reads one block at a time; its fitted state is numpy
  weights, like the in-memory head's.

Both are scikit-learn estimators (``tests/test_heads.py`` runs scikit-learn's
estimator checks on them); ``X`` may also be a numpy array (one block), which is
how the tests compare them with the in-memory heads. The registry
(:mod:`pipeline.heads.registry`) says which kind streams as which.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def blocks_rows(X) -> list[slice]:
    """Row ranges of the blocks of ``X``: its dask chunks, or the whole of a numpy array."""
    if not hasattr(X, "compute"):
        return [slice(0, len(X))]
    bounds = np.concatenate([[0], np.cumsum(X.chunks[0])])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def read_block(X, rows: slice) -> np.ndarray:
    """Rows ``rows`` of ``X`` in memory, float32 (a dask block is read only now)."""
    block = X[rows]
    return np.asarray(block.compute() if hasattr(block, "compute") else block, dtype=np.float32)


def blocks(X) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, block)`` for each block of ``X``, one in memory at a time."""
    for rows in blocks_rows(X):
        yield rows, read_block(X, rows)


def scaled(scaler: StandardScaler | None, block: np.ndarray) -> np.ndarray:
    """``block`` through ``scaler``, or as it is when there is none."""
    return scaler.transform(block) if scaler is not None else block


def shuffled_blocks(
    X,
    y: np.ndarray,
    scaler: StandardScaler | None,
    rng: np.random.Generator,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over ``X``: its blocks in a random order, each scaled and with its rows shuffled, with labels."""
    parts = blocks_rows(X)
    for index in rng.permutation(len(parts)):
        rows = parts[index]
        block = scaled(scaler, read_block(X, rows))
        order = rng.permutation(len(block))
        yield block[order], y[rows][order]


def fit_scaler(X) -> StandardScaler:
    """A StandardScaler fitted block by block."""
    scaler = StandardScaler()
    for _, block in blocks(X):
        scaler.partial_fit(block)
    return scaler


def _is_lazy(X) -> bool:
    return hasattr(X, "compute")


def _check_fit(estimator, X, y):
    """Validate training data: numpy through scikit-learn's checks, dask by shape (read nothing)."""
    if not _is_lazy(X):
        X, y = validate_data(estimator, X, y, dtype=np.float32)
    else:
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features). Received: shape {X.shape}")
        y = np.asarray(y)
        if len(y) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} labels")
        estimator.n_features_in_ = int(X.shape[1])
    check_classification_targets(y)
    return X, y


def _check_predict(estimator, X):
    """Validate data to predict on against what the estimator was fitted on."""
    check_is_fitted(estimator)
    if not _is_lazy(X):
        return validate_data(estimator, X, dtype=np.float32, reset=False)
    if X.ndim != 2 or X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has shape {X.shape}; {type(estimator).__name__} was fitted on {estimator.n_features_in_} features"
        )
    return X


class StreamingLinearHead(ClassifierMixin, BaseEstimator):
    """A linear head trained by SGD over blocks of a (dask) feature matrix.

    Parameters
    ----------
    loss : {'log_loss', 'hinge'}
        Logistic regression or a linear SVM.
    alpha : float
        L2 regularisation strength (``SGDClassifier``'s; roughly 1 / (C · n_samples)).
    epochs : int
        Passes over the blocks, in a seeded random order each time.
    standardize : bool
        Fit a ``StandardScaler`` over the blocks first and apply it to each.
    random_state : int

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    scaler_ : StandardScaler or None
    model_ : SGDClassifier
    """

    def __init__(self, loss="log_loss", alpha=1e-4, epochs=5, standardize=True, random_state=0):
        self.loss = loss
        self.alpha = alpha
        self.epochs = epochs
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, y):
        """Fit on ``X`` (dask or numpy, shape (n_samples, n_features)) and ``y`` (n_samples,)."""
        if self.loss not in ("log_loss", "hinge"):
            raise ValueError(f"loss must be 'log_loss' or 'hinge'. Received: loss={self.loss!r}")
        X, y = _check_fit(self, X, y)
        self.classes_ = np.unique(y)
        self.scaler_ = fit_scaler(X) if self.standardize else None
        self.model_ = SGDClassifier(loss=self.loss, alpha=self.alpha, random_state=self.random_state)
        rng = np.random.default_rng(self.random_state)
        for _ in range(self.epochs):
            for block, labels in shuffled_blocks(X, y, self.scaler_, rng):
                self.model_.partial_fit(block, labels, classes=self.classes_)
        return self

    def decision_function(self, X) -> np.ndarray:
        X = _check_predict(self, X)
        return np.concatenate([self.model_.decision_function(scaled(self.scaler_, b)) for _, b in blocks(X)])

    def predict(self, X) -> np.ndarray:
        X = _check_predict(self, X)
        return np.concatenate([self.model_.predict(scaled(self.scaler_, b)) for _, b in blocks(X)])

    def predict_proba(self, X) -> np.ndarray:
        if self.loss != "log_loss":
            raise AttributeError("predict_proba needs loss='log_loss'")
        X = _check_predict(self, X)
        return np.concatenate([self.model_.predict_proba(scaled(self.scaler_, b)) for _, b in blocks(X)])


class _BlockBatches:
    """Mini-batches drawn from one block of the features at a time, for Keras' fit."""

    def __init__(self, X, y: np.ndarray, batch_size: int, scaler, seed: int):
        self.X, self.y, self.batch_size, self.scaler = X, y, batch_size, scaler
        self.rng = np.random.default_rng(seed)
        self.parts = blocks_rows(X)

    def epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block, labels in shuffled_blocks(self.X, self.y, self.scaler, self.rng):
            block = block.astype(np.float32, copy=False)
            for start in range(0, len(block), self.batch_size):
                yield block[start : start + self.batch_size], labels[start : start + self.batch_size]


class StreamingDenseHead(ClassifierMixin, BaseEstimator):
    """The Keras dense head trained from a generator over blocks of a (dask) feature matrix.

    Parameters are those of :class:`pipeline.heads.dense.DenseHead`, without early
    stopping (holding out a validation part would need a second pass per
    epoch); ``standardize`` fits a ``StandardScaler`` over the blocks first.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    scaler_ : StandardScaler or None
    coefs_, intercepts_ : list of ndarray
        The network's kernels and biases (float32), as :class:`~pipeline.heads.dense.DenseHead` has them.
    n_epochs_ : int
    """

    def __init__(
        self,
        hidden_units=256,
        dropout=0.5,
        learning_rate=1e-3,
        epochs=20,
        batch_size=64,
        standardize=True,
        random_state=0,
        weight_decay=0.0,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, y):
        """Fit on ``X`` (dask or numpy, shape (n_samples, n_features)) and ``y`` (n_samples,)."""
        import keras
        import tensorflow as tf

        from pipeline.heads.dense import build_network, network_weights
        from pipeline.tfdata import static

        X, y = _check_fit(self, X, y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"StreamingDenseHead needs at least 2 classes; got one class: {self.classes_.tolist()}")
        self.scaler_ = fit_scaler(X) if self.standardize else None
        keras.utils.set_random_seed(self.random_state)
        # The same network as the in-memory dense head; only how it is fed differs.
        model = build_network(
            X.shape[1],
            len(self.classes_),
            hidden_units=self.hidden_units,
            dropout=self.dropout,
            weight_decay=self.weight_decay,
        )
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss="sparse_categorical_crossentropy")
        source = _BlockBatches(X, encoded, self.batch_size, self.scaler_, self.random_state)
        dataset = tf.data.Dataset.from_generator(
            source.epoch,
            output_signature=(tf.TensorSpec((None, X.shape[1]), tf.float32), tf.TensorSpec((None,), tf.int64)),
        )
        # The generator is called afresh on each repetition: a new block order every epoch.
        steps = sum(-(-(rows.stop - rows.start) // self.batch_size) for rows in source.parts)
        history = model.fit(
            static(dataset.repeat()), epochs=self.epochs, steps_per_epoch=steps, verbose=0, shuffle=False
        )
        self.n_epochs_ = len(history.history["loss"])
        self.coefs_, self.intercepts_ = network_weights(model)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), block by block, in numpy."""
        from pipeline.heads.dense import forward_probabilities

        X = _check_predict(self, X)
        parts = [
            forward_probabilities(scaled(self.scaler_, block), self.coefs_, self.intercepts_) for _, block in blocks(X)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)), np.float32)

    def predict(self, X) -> np.ndarray:
        """Predicted labels, shape (n_samples,)."""
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]
