"""Heads for feature sets larger than memory: trained chunk by chunk from dask arrays.

``open_feature_set(..., as_dask=True)`` gives the pooled features as a dask
array aligned with the store's chunks; nothing is read until a block is asked
for. The heads here never hold more than one block:

- :class:`StreamingLinearHead` — logistic regression (``loss="log_loss"``) or a
  linear SVM (``loss="hinge"``) by ``SGDClassifier.partial_fit``, after a first
  pass that fits the standardisation with ``StandardScaler.partial_fit``;
- :class:`StreamingDenseHead` — the Keras dense head of :mod:`pipeline.heads`
  fed by a ``keras.utils.PyDataset`` that reads one block at a time.

Both are scikit-learn estimators; ``X`` may also be a numpy array (one block),
which is how the tests compare them with the in-memory heads.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted


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


def scaled(scaler: Optional[StandardScaler], block: np.ndarray) -> np.ndarray:
    """``block`` through ``scaler``, or as it is when there is none."""
    return scaler.transform(block) if scaler is not None else block


def shuffled_blocks(X, y: np.ndarray, scaler: Optional[StandardScaler], rng: np.random.Generator,
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
        y = np.asarray(y)
        if len(y) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} labels")
        self.classes_ = np.unique(y)
        self.scaler_ = fit_scaler(X) if self.standardize else None
        self.model_ = SGDClassifier(loss=self.loss, alpha=self.alpha, random_state=self.random_state)
        rng = np.random.default_rng(self.random_state)
        for _ in range(self.epochs):
            for block, labels in shuffled_blocks(X, y, self.scaler_, rng):
                self.model_.partial_fit(block, labels, classes=self.classes_)
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return np.concatenate([self.model_.decision_function(scaled(self.scaler_, b)) for _, b in blocks(X)])

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return np.concatenate([self.model_.predict(scaled(self.scaler_, b)) for _, b in blocks(X)])

    def predict_proba(self, X) -> np.ndarray:
        if self.loss != "log_loss":
            raise AttributeError("predict_proba needs loss='log_loss'")
        check_is_fitted(self, "model_")
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
                yield block[start:start + self.batch_size], labels[start:start + self.batch_size]


class StreamingDenseHead(ClassifierMixin, BaseEstimator):
    """The Keras dense head trained from a generator over blocks of a (dask) feature matrix.

    Parameters are those of :class:`pipeline.heads.DenseHead`, without early
    stopping (holding out a validation part would need a second pass per
    epoch); ``standardize`` fits a ``StandardScaler`` over the blocks first.
    """

    def __init__(self, hidden_units=256, dropout=0.5, learning_rate=1e-3, epochs=20, batch_size=64,
                 standardize=True, random_state=0):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, y):
        import keras
        import tensorflow as tf

        y = np.asarray(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        self.scaler_ = fit_scaler(X) if self.standardize else None
        from pipeline.dense_head import DenseHead
        from pipeline.inputs import static

        keras.utils.set_random_seed(self.random_state)
        # The same network as the in-memory dense head; only how it is fed differs.
        self.model_ = DenseHead(hidden_units=self.hidden_units, dropout=self.dropout)._build(
            X.shape[1], len(self.classes_))
        self.model_.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                            loss="sparse_categorical_crossentropy")
        source = _BlockBatches(X, encoded, self.batch_size, self.scaler_, self.random_state)
        dataset = tf.data.Dataset.from_generator(
            source.epoch, output_signature=(tf.TensorSpec((None, X.shape[1]), tf.float32),
                                            tf.TensorSpec((None,), tf.int64)))
        # The generator is called afresh on each repetition: a new block order every epoch.
        steps = sum(-(-(rows.stop - rows.start) // self.batch_size) for rows in source.parts)
        history = self.model_.fit(static(dataset.repeat()), epochs=self.epochs, steps_per_epoch=steps, verbose=0,
                                  shuffle=False)
        self.n_epochs_ = len(history.history["loss"])
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        parts = []
        for _, block in blocks(X):
            parts.append(self.model_.predict(scaled(self.scaler_, block).astype(np.float32), batch_size=4096,
                                             verbose=0))
        return np.concatenate(parts)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# --------------------------------------------------------------------------- the heads stage's out-of-core path


def pooled_bytes(features, pooling: str, split: str = "train") -> int:
    """Bytes the pooled float32 features of ``split`` would take in memory, read from the store's metadata."""
    from pipeline.store import open_store

    group = open_store(features)
    n = group[split]["X"].shape[0]
    shape = tuple(group.attrs["feature_shape"])
    channels = shape[-1]
    width = {"avg": channels, "max": channels, "avgmax": 2 * channels}.get(pooling, int(np.prod(shape)))
    if len(shape) == 1:
        width = channels
    return int(n * width * 4)


def streaming_head(variant, heads, n_train: int):
    """The out-of-core estimator for a variant, or ``None`` when its kind or preprocessing has none.

    Logistic regression and the linear SVM become SGD (``alpha = 1 / (C · n_train)``,
    the same penalty as scikit-learn's C); the dense head streams blocks.
    RBF/polynomial SVMs, PCA and augmented views have no out-of-core form here.
    """
    if variant.pca is not None or variant.uses_views:
        return None
    p = dict(variant.params)
    if variant.kind in ("logreg", "svm_linear"):
        return StreamingLinearHead(loss="log_loss" if variant.kind == "logreg" else "hinge",
                                   alpha=1.0 / (p["C"] * n_train), epochs=heads.out_of_core_epochs,
                                   standardize=variant.standardize, random_state=heads.seed)
    if variant.kind == "dense":
        return StreamingDenseHead(hidden_units=p["hidden_units"], dropout=p["dropout"],
                                  learning_rate=p["learning_rate"], epochs=p["epochs"],
                                  batch_size=heads.dense.batch_size, standardize=variant.standardize,
                                  random_state=heads.seed)
    return None


def fit_out_of_core(features, variants, heads):
    """Fit every variant that has an out-of-core form, reading the store as dask arrays.

    Yields
    ------
    variant, estimator, row
        ``row`` as :func:`pipeline.sweep.run_sweep` gives it (validation
        accuracy and macro-F1, fit seconds, ``out_of_core: true``).
    """
    import time

    from sklearn.metrics import accuracy_score, f1_score

    from pipeline.store import open_feature_set

    for pooling in sorted({v.pooling for v in variants}):
        train = open_feature_set(features, "train", pooling=pooling, as_dask=True)
        val = open_feature_set(features, "val", pooling=pooling, as_dask=True)
        for variant in (v for v in variants if v.pooling == pooling):
            estimator = streaming_head(variant, heads, len(train.y))
            if estimator is None:
                continue
            started = time.perf_counter()
            estimator.fit(train.X, train.y)
            seconds = time.perf_counter() - started
            predicted = estimator.predict(val.X) if len(val.y) else np.zeros(0, int)
            yield variant, estimator, {
                "val_accuracy": float(accuracy_score(val.y, predicted)) if len(val.y) else None,
                "val_macro_f1": float(f1_score(val.y, predicted, average="macro", zero_division=0))
                if len(val.y) else None,
                "val_accuracy_std": None, "fit_seconds": round(seconds, 4), "peak_rss_mib": None,
                "features_memmapped": False, "n_epochs": estimator.epochs, "out_of_core": True,
            }
