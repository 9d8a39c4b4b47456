"""Fitted scikit-learn steps as exact Keras layers: the forms the registry's kinds point to.

Each function maps one fitted step to Keras layers computing exactly what it
computes: ``StandardScaler`` and ``PCA`` (affine maps, whitening included),
``LogisticRegression`` (softmax, or sigmoid for two classes), the Keras
:class:`~pipeline.heads.dense.DenseHead` (its own layers, weights copied), a
``LinearSVC`` whose decision function is temperature-scaled (times β, then
softmax, which keeps the SVM's argmax) and an RBF or polynomial ``SVC``
(the kernel against its support vectors, its dual coefficients as one affine
map to the pairwise decisions, the one-vs-one vote, then temperature
scaling: :mod:`pipeline.heads.kernel_layers`). :func:`pipeline.heads.keras_form.to_keras_layers`
puts them together for a whole fitted pipeline; a step without an exact form
raises :class:`NotConvertibleError` naming it, rather than being approximated.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class NotConvertibleError(ValueError):
    """A pipeline step has no exact Keras equivalent."""


def preprocessing_layers(step: Any, name: str) -> list:
    """A fitted StandardScaler or PCA as one affine Keras layer."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if isinstance(step, StandardScaler):
        n = step.n_features_in_
        mean = step.mean_ if step.with_mean else np.zeros(n)
        scale = step.scale_ if step.with_std else np.ones(n)
        return [affine(np.diag(1.0 / scale), -mean / scale, name)]
    if isinstance(step, PCA):
        kernel = step.components_.T
        if step.whiten:
            kernel = kernel / np.sqrt(step.explained_variance_)
        return [affine(kernel, -step.mean_ @ kernel, name)]
    raise NotConvertibleError(
        f"preprocessing step {type(step).__name__} has no exact Keras equivalent (convertible: StandardScaler, PCA)"
    )


def logistic_layers(step: Any, name: str, temperature: float | None = None) -> list:
    """A fitted LogisticRegression: its logits, then softmax (two classes: logits (0, z))."""
    _expect(step, "sklearn.linear_model", "LogisticRegression")
    _no_temperature(step, temperature)
    coef, intercept = step.coef_, step.intercept_
    if coef.shape[0] == 1:
        # Binary: sklearn's sigmoid of z equals a softmax over logits (0, z).
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    return [affine(coef.T, intercept, name, activation="softmax")]


def linear_svm_layers(step: Any, name: str, temperature: float | None = None) -> list:
    """A fitted LinearSVC calibrated by temperature scaling: β times its decision function, then softmax."""
    _expect(step, "sklearn.svm", "LinearSVC")
    if temperature is None:
        raise NotConvertibleError(
            f"{type(step).__name__} gives no probabilities: calibrate it by temperature "
            "scaling first (the export stage does, on validation)"
        )
    coef, intercept = step.coef_, step.intercept_
    if coef.shape[0] == 1:
        # Binary: scikit-learn's logits are (-f, f).
        coef, intercept = np.vstack([-coef, coef]), np.array([-intercept[0], intercept[0]])
    return [affine(temperature * coef.T, temperature * intercept, f"{name}_calibrated", activation="softmax")]


def svc_layers(step: Any, name: str, temperature: float | None = None) -> list:
    """A fitted RBF or polynomial SVC calibrated by temperature scaling, exactly as scikit-learn computes it.

    The kernel against the support vectors, then one affine map to libsvm's
    pairwise decisions (pair (i, j) takes the dual coefficients of i's support
    vectors from row j−1 and of j's from row i, plus its intercept), then
    scikit-learn's one-vs-rest decision function (the vote), times β, softmax.
    Two classes: the decision function is that one pair's, logits (−f, f).
    """
    from pipeline.heads.kernel_layers import OneVsOneVote, SupportVectorKernel, pairs

    _expect(step, "sklearn.svm", "SVC")
    if temperature is None:
        raise NotConvertibleError(
            f"{type(step).__name__} gives no probabilities: calibrate it by temperature "
            "scaling first (the export stage does, on validation)"
        )
    if getattr(step, "kernel", None) not in ("rbf", "poly") or step.decision_function_shape != "ovr":
        raise NotConvertibleError(
            f"only RBF and polynomial SVCs with decision_function_shape='ovr' convert "
            f"exactly. Received: kernel={getattr(step, 'kernel', None)!r}, "
            f"decision_function_shape={getattr(step, 'decision_function_shape', None)!r}"
        )
    support = np.asarray(step.support_vectors_, np.float64)
    n_classes = len(step.classes_)
    kernel = SupportVectorKernel(
        len(support),
        kernel=step.kernel,
        gamma=step._gamma,
        coef0=step.coef0,
        degree=step.degree,
        name=f"{name}_kernel",
        dtype="float32",
    )
    kernel.build((None, support.shape[1]))
    kernel.set_weights([support.astype(np.float32)])
    # Which support vectors belong to which class: they are stored grouped by class, n_support_[c] each.
    bounds = np.concatenate([[0], np.cumsum(step.n_support_)])
    weights = np.zeros((len(support), len(pairs(n_classes))))
    for k, (i, j) in enumerate(pairs(n_classes)):
        weights[bounds[i] : bounds[i + 1], k] = step.dual_coef_[j - 1, bounds[i] : bounds[i + 1]]
        weights[bounds[j] : bounds[j + 1], k] = step.dual_coef_[i, bounds[j] : bounds[j + 1]]
    decisions = affine(weights, step.intercept_, f"{name}_pairwise")
    if n_classes == 2:
        # scikit-learn's binary decision function is this pair's (its public attributes are flipped for it).
        return [
            kernel,
            decisions,
            affine(temperature * np.array([[-1.0, 1.0]]), np.zeros(2), f"{name}_calibrated", activation="softmax"),
        ]
    return [
        kernel,
        decisions,
        OneVsOneVote(n_classes, name=f"{name}_vote", dtype="float32"),
        affine(temperature * np.eye(n_classes), np.zeros(n_classes), f"{name}_calibrated", activation="softmax"),
    ]


def dense_layers(step: Any, name: str, temperature: float | None = None) -> list:
    """A fitted DenseHead: copies of its own Keras layers, weights included."""
    import keras

    _expect(step, "pipeline.heads.dense", "DenseHead")
    _no_temperature(step, temperature)
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


def _expect(step: Any, module: str, name: str) -> None:
    """Refuse, by name, a step of another type than the form converts (an out-of-core head, say)."""
    import importlib

    if not isinstance(step, getattr(importlib.import_module(module), name)):
        raise NotConvertibleError(
            f"{type(step).__name__} has no exact Keras form here (this form converts a "
            f"fitted {name}; heads trained out of core have none)"
        )


def _no_temperature(step: Any, temperature: float | None) -> None:
    if temperature is not None:
        raise NotConvertibleError(
            f"{type(step).__name__} gives probabilities itself; it is never temperature-calibrated"
        )


def affine(kernel: np.ndarray, bias: np.ndarray, name: str, activation=None):
    """A float32 Dense layer holding ``x @ kernel + bias`` exactly."""
    import keras

    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name, dtype="float32")
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel.astype(np.float32), np.asarray(bias, np.float32)])
    return layer
