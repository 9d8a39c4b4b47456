"""Fitted heads as Keras layers give the same probabilities as scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from pipeline.heads.conversion import NotConvertibleError
from pipeline.heads.keras_form import to_keras_layers
from pipeline.heads.dense import DenseHead


def _data(classes, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), 30)
    X = rng.normal(size=(len(y), 12)) * rng.uniform(0.5, 5, size=12) + rng.normal(size=12) * 3
    X[:, :3] += y[:, None] * 2.0
    return X.astype(np.float32), y


def _keras_proba(estimator, X, kind):
    import keras

    inputs = keras.Input((X.shape[1],))
    out = inputs
    for layer in to_keras_layers(estimator, kind):
        out = layer(out)
    return keras.Model(inputs, out).predict(X, verbose=0)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("pca", [None, PCA(5), PCA(4, whiten=True)])
def test_logistic_regression_pipelines_convert_exactly(classes, pca):
    X, y = _data(classes)
    steps = [("standardize", StandardScaler())] + ([("pca", pca)] if pca is not None else [])
    estimator = Pipeline(steps + [("head", LogisticRegression(C=0.5, max_iter=2000))]).fit(X, y)
    np.testing.assert_allclose(_keras_proba(estimator, X, "logreg"), estimator.predict_proba(X), atol=2e-5)


def test_dense_head_converts_exactly():
    X, y = _data(3)
    estimator = Pipeline([("standardize", StandardScaler()),
                          ("head", DenseHead(hidden_units=8, dropout=0.3, epochs=5, random_state=0))]).fit(X, y)
    np.testing.assert_allclose(_keras_proba(estimator, X, "dense"), estimator.predict_proba(X), atol=2e-5)


def test_rbf_svm_is_refused_by_name():
    X, y = _data(2)
    with pytest.raises(NotConvertibleError, match="svm_rbf heads \\(SVC\\) have no exact Keras form"):
        to_keras_layers(Pipeline([("head", SVC())]).fit(X, y), "svm_rbf")


@pytest.mark.parametrize("classes", [2, 3])
def test_calibrated_linear_svm_converts_exactly(classes):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.svm import LinearSVC

    X, y = _data(classes)
    svm = Pipeline([("standardize", StandardScaler()), ("pca", PCA(6)), ("head", LinearSVC(C=0.1))]).fit(X, y)
    calibrated = CalibratedClassifierCV(FrozenEstimator(svm), method="temperature").fit(X[::2], y[::2])
    np.testing.assert_allclose(_keras_proba(calibrated, X, "svm_linear"), calibrated.predict_proba(X), atol=2e-5)
    np.testing.assert_array_equal(calibrated.predict(X), svm.predict(X))  # calibration keeps the argmax


def test_uncalibrated_linear_svm_is_refused():
    from sklearn.svm import LinearSVC

    X, y = _data(2)
    with pytest.raises(NotConvertibleError, match="LinearSVC"):
        to_keras_layers(Pipeline([("head", LinearSVC())]).fit(X, y), "svm_linear")
