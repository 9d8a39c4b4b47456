"""Heads: scikit-learn estimators trained on cached features, and their grid.

Every head is a scikit-learn estimator, the Keras dense head included
(:class:`DenseHead`), so one loop, ``clone``, ``joblib`` and grid searches
serve all of them. :func:`expand_grid` turns the ``heads`` section of
params.yaml into :class:`Variant` objects, each with a stable readable id such
as ``avg-logreg-C0.1`` or ``avg-dense-h256-d0.5-lr0.001-e60``.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from pipeline.config import HeadsParams

log = logging.getLogger(__name__)

# Short names that make variant ids readable and stable.
_ABBREVIATIONS = {"C": "C", "gamma": "g", "hidden_units": "h", "dropout": "d",
                  "learning_rate": "lr", "epochs": "e"}
# Per-kind hyperparameters that are swept (lists in params.yaml); the rest are fixed settings.
SWEPT = {"logreg": ("C",), "svm_linear": ("C",), "svm_rbf": ("C", "gamma"),
         "dense": ("hidden_units", "dropout", "learning_rate", "epochs")}


class DenseHead(ClassifierMixin, BaseEstimator):
    """A Keras dense head — [Dense(relu) → Dropout] → Dense(softmax) — as a scikit-learn classifier.

    Parameters
    ----------
    hidden_units : int
        Width of the hidden layer; 0 for none (softmax regression).
    dropout : float
        Dropout rate after the hidden layer (or on the input if there is none).
    learning_rate : float
        Adam's learning rate.
    epochs : int
        Maximum epochs; early stopping usually ends sooner.
    batch_size : int
    patience : int
        Epochs without improvement of the validation loss before stopping; the
        best weights are restored.
    validation_fraction : float
        Share of the training data held out (stratified) for early stopping.
    random_state : int
        Seeds the initialisation, dropout, shuffling and the held-out split.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    model_ : keras.Model
    n_epochs_ : int
        Epochs actually run.
    """

    def __init__(self, hidden_units=256, dropout=0.5, learning_rate=1e-3, epochs=60, batch_size=32,
                 patience=8, validation_fraction=0.15, random_state=0):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X, y):
        """Train on ``X`` of shape (n_samples, n_features) and labels ``y`` of shape (n_samples,)."""
        import keras

        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"DenseHead needs at least 2 classes. Received: classes={self.classes_.tolist()}")
        keras.utils.set_random_seed(self.random_state)
        X_fit, y_fit, validation = X, encoded, None
        counts = np.bincount(encoded)
        n_held = int(round(self.validation_fraction * len(y)))
        if self.patience and counts.min() >= 2 and n_held >= len(self.classes_):
            X_fit, X_held, y_fit, y_held = train_test_split(
                X, encoded, test_size=n_held, stratify=encoded, random_state=self.random_state)
            validation = (X_held, y_held)
        self.model_ = self._build(X.shape[1], len(self.classes_))
        callbacks = []
        if validation is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience,
                                                           restore_best_weights=True))
        history = self.model_.fit(X_fit, y_fit, epochs=self.epochs, batch_size=self.batch_size,
                                  validation_data=validation, callbacks=callbacks, verbose=0, shuffle=True)
        self.n_epochs_ = len(history.history["loss"])
        return self

    def _build(self, n_features: int, n_classes: int):
        import keras

        layers: list[Any] = [keras.Input((n_features,))]
        if self.hidden_units:
            layers.append(keras.layers.Dense(self.hidden_units, activation="relu", name="hidden"))
        if self.dropout:
            layers.append(keras.layers.Dropout(self.dropout, name="dropout"))
        layers.append(keras.layers.Dense(n_classes, activation="softmax", name="probabilities"))
        model = keras.Sequential(layers, name="dense_head")
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return np.asarray(self.model_.predict(X, batch_size=1024, verbose=0))

    def predict(self, X):
        """Predicted labels, shape (n_samples,)."""
        check_is_fitted(self, "model_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


@dataclass(frozen=True)
class Variant:
    """One point of the heads grid: a head kind with its hyperparameters, on one pooling."""

    kind: str
    pooling: str
    params: tuple[tuple[str, Any], ...]

    @property
    def id(self) -> str:
        parts = [self.pooling, self.kind]
        parts += [f"{_ABBREVIATIONS.get(k, k)}{_fmt(v)}" for k, v in self.params]
        return "-".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_grid(heads: HeadsParams) -> list[Variant]:
    """Every variant of the grid, in a stable order (pooling, kind, then the product of swept values)."""
    variants = []
    for pooling in heads.pooling:
        for kind in heads.kinds:
            grid = getattr(heads, kind)
            names = SWEPT[kind]
            for values in itertools.product(*(getattr(grid, n) for n in names)):
                variants.append(Variant(kind=kind, pooling=pooling, params=tuple(zip(names, values))))
    ids = [v.id for v in variants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"the heads grid lists the same variant twice: {duplicates}")
    return variants


def make_estimator(variant: Variant, heads: HeadsParams) -> Pipeline:
    """The scikit-learn pipeline (standardisation + head) for a variant."""
    p = dict(variant.params)
    if variant.kind == "logreg":
        head = LogisticRegression(C=p["C"], max_iter=heads.logreg.max_iter, random_state=heads.seed)
    elif variant.kind == "svm_linear":
        head = LinearSVC(C=p["C"], random_state=heads.seed)
    elif variant.kind == "svm_rbf":
        head = SVC(kernel="rbf", C=p["C"], gamma=p["gamma"], random_state=heads.seed)
    elif variant.kind == "dense":
        d = heads.dense
        head = DenseHead(hidden_units=p["hidden_units"], dropout=p["dropout"], learning_rate=p["learning_rate"],
                         epochs=p["epochs"], batch_size=d.batch_size, patience=d.patience,
                         validation_fraction=d.validation_fraction, random_state=heads.seed)
    else:
        raise ValueError(f"unknown head kind {variant.kind!r}. Valid kinds: {sorted(SWEPT)}")
    return Pipeline([("standardize", StandardScaler()), ("head", head)])
