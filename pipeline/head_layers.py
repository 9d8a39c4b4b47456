"""Fitted scikit-learn heads as exact Keras layers.

A head pipeline (standardisation, optional PCA, then a classifier) learned on
cached features becomes a stack of Keras layers computing the same
probabilities, so it can sit on top of the truncated backbone: the fine-tune
stage starts from it, and an exported model carries it.

Exact conversions: ``StandardScaler`` (an affine map), ``PCA`` (an affine map,
whitening included), ``LogisticRegression`` (softmax, or sigmoid for two
classes), :class:`pipeline.heads.DenseHead` (its own Keras layers, weights
copied) and a ``LinearSVC`` pipeline calibrated by temperature scaling
(``CalibratedClassifierCV(FrozenEstimator(...), method="temperature")``: the
decision function times β, then softmax — which keeps the SVM's argmax). Anything
else — an RBF or polynomial SVM — raises, naming the step, rather than
approximating.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class NotConvertibleError(ValueError):
    """A pipeline step has no exact Keras equivalent."""


def pipeline_steps(estimator: Any) -> list[tuple[str, Any]]:
    """The (name, step) pairs of a fitted estimator, a bare classifier being one step."""
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return [("head", estimator)]
    return [(name, step) for name, step in steps if step not in (None, "passthrough")]


def to_keras_layers(estimator: Any, *, name: str = "head") -> list:  # noqa: C901 - one branch per kind
    """Keras layers that map pooled features to the estimator's class probabilities.

    Parameters
    ----------
    estimator : fitted sklearn Pipeline or classifier
    name : str
        Prefix of the layers' names.

    Returns
    -------
    list of keras layers
        Apply in order to a tensor of shape (n, n_features); the last gives
        probabilities of shape (n, n_classes) in ``classes_`` order.

    Raises
    ------
    NotConvertibleError
        For a step without an exact equivalent (e.g. an RBF SVM).
    """
    from sklearn.calibration import CalibratedClassifierCV

    if isinstance(estimator, CalibratedClassifierCV):
        return _calibrated(estimator, name)
    layers = []
    for index, (step_name, step) in enumerate(pipeline_steps(estimator)):
        layers.extend(_convert(step, f"{name}_{index}_{step_name}"))
    return layers


def _calibrated(estimator: Any, name: str) -> list:
    """A temperature-scaled linear SVM pipeline: its steps, then its decision function times β, softmax."""
    from sklearn.svm import LinearSVC

    if len(estimator.calibrated_classifiers_) != 1 or estimator.method != "temperature":
        raise NotConvertibleError("only temperature scaling fitted once (on a frozen estimator) converts exactly; "
                                  f"received method={estimator.method!r} with "
                                  f"{len(estimator.calibrated_classifiers_)} calibrated classifiers")
    calibrated = estimator.calibrated_classifiers_[0]
    inner = getattr(calibrated.estimator, "estimator", calibrated.estimator)  # unwrap FrozenEstimator
    *preprocessing, (head_name, head) = pipeline_steps(inner)
    if not isinstance(head, LinearSVC):
        raise NotConvertibleError(f"calibrated {type(head).__name__} has no exact Keras equivalent "
                                  "(convertible: a calibrated LinearSVC)")
    layers = []
    for index, (step_name, step) in enumerate(preprocessing):
        layers.extend(_convert(step, f"{name}_{index}_{step_name}"))
    beta = calibrated.calibrators[0].beta_
    coef, intercept = head.coef_, head.intercept_
    if coef.shape[0] == 1:
        # Binary: scikit-learn's logits are (-f, f).
        coef, intercept = np.vstack([-coef, coef]), np.array([-intercept[0], intercept[0]])
    layers.append(_affine(beta * coef.T, beta * intercept, f"{name}_{head_name}_calibrated",
                          activation="softmax"))
    return layers


def _convert(step: Any, name: str) -> list:
    import keras
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from pipeline.heads import DenseHead

    if isinstance(step, StandardScaler):
        n = step.n_features_in_
        mean = step.mean_ if step.with_mean else np.zeros(n)
        scale = step.scale_ if step.with_std else np.ones(n)
        return [_affine(np.diag(1.0 / scale), -mean / scale, name)]
    if isinstance(step, PCA):
        kernel = step.components_.T
        if step.whiten:
            kernel = kernel / np.sqrt(step.explained_variance_)
        return [_affine(kernel, -step.mean_ @ kernel, name)]
    if isinstance(step, LogisticRegression):
        coef, intercept = step.coef_, step.intercept_
        if coef.shape[0] == 1:
            # Binary: sklearn's sigmoid of z equals a softmax over logits (0, z).
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        return [_affine(coef.T, intercept, name, activation="softmax")]
    if isinstance(step, DenseHead):
        copies = []
        for layer in step.model_.layers:
            config = {**layer.get_config(), "name": f"{name}_{layer.name}"}
            if isinstance(layer, keras.layers.Dense):
                clone = keras.layers.Dense.from_config(config)
                clone.build((None, layer.kernel.shape[0]))
                clone.set_weights(layer.get_weights())
            elif isinstance(layer, keras.layers.Dropout):
                clone = keras.layers.Dropout.from_config(config)
            else:
                raise NotConvertibleError(f"DenseHead layer {layer.name} ({type(layer).__name__}) is not expected")
            copies.append(clone)
        return copies
    raise NotConvertibleError(f"{type(step).__name__} has no exact Keras equivalent (convertible: StandardScaler, "
                              "PCA, LogisticRegression, DenseHead, a temperature-calibrated LinearSVC)")


def _affine(kernel: np.ndarray, bias: np.ndarray, name: str, activation=None):
    import keras

    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name, dtype="float32")
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel.astype(np.float32), np.asarray(bias, np.float32)])
    return layer


def classes_of(estimator: Any) -> np.ndarray:
    """The class labels of a fitted estimator, in the order of its probability columns."""
    return np.asarray(estimator.classes_)
