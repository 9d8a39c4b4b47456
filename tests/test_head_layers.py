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
from pipeline.heads.dense import DenseHead
from pipeline.heads.keras_form import to_keras_layers


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
    estimator = Pipeline(
        [("standardize", StandardScaler()), ("head", DenseHead(hidden_units=8, dropout=0.3, epochs=5, random_state=0))]
    ).fit(X, y)
    np.testing.assert_allclose(_keras_proba(estimator, X, "dense"), estimator.predict_proba(X), atol=2e-5)


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize(
    "kind, svc",
    [
        ("svm_rbf", SVC(kernel="rbf", C=1.0, gamma="scale")),
        ("svm_rbf", SVC(kernel="rbf", C=10.0, gamma=0.05)),
        ("svm_poly", SVC(kernel="poly", C=1.0, gamma="scale", degree=3)),
        ("svm_poly", SVC(kernel="poly", C=0.5, gamma="auto", degree=2, coef0=1.0)),
    ],
)
def test_calibrated_kernel_svms_convert_exactly(classes, kind, svc):
    """The kernel against the support vectors, the one-vs-one vote and temperature scaling, as scikit-learn."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    X, y = _data(classes, seed=classes)
    head = Pipeline([("standardize", StandardScaler()), ("pca", PCA(8)), ("head", clone(svc))]).fit(X[1::2], y[1::2])
    calibrated = CalibratedClassifierCV(FrozenEstimator(head), method="temperature").fit(X[::2], y[::2])
    np.testing.assert_allclose(_keras_proba(calibrated, X, kind), calibrated.predict_proba(X), atol=2e-5)
    ovr = head.decision_function(X) if classes > 2 else None
    if ovr is not None:  # the vote is the one scikit-learn's decision function gives, ties included
        np.testing.assert_array_equal(calibrated.predict_proba(X).argmax(axis=1), ovr.argmax(axis=1))


def test_kernel_svm_layers_save_and_load_in_safe_mode(tmp_path):
    import keras
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    import pipeline.heads.kernel_layers  # noqa: F401 - registers the layers, as load_model does

    X, y = _data(4)
    head = Pipeline([("standardize", StandardScaler()), ("head", SVC(kernel="poly", degree=2))]).fit(X, y)
    calibrated = CalibratedClassifierCV(FrozenEstimator(head), method="temperature").fit(X, y)
    inputs = keras.Input((X.shape[1],))
    out = inputs
    for layer in to_keras_layers(calibrated, "svm_poly"):
        out = layer(out)
    keras.Model(inputs, out).save(tmp_path / "svm.keras")
    loaded = keras.saving.load_model(tmp_path / "svm.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), calibrated.predict_proba(X), atol=2e-5)


def test_an_uncalibrated_or_other_kernel_svm_is_refused_by_name():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    X, y = _data(3)
    with pytest.raises(NotConvertibleError, match="SVC gives no probabilities: calibrate it"):
        to_keras_layers(Pipeline([("head", SVC())]).fit(X, y), "svm_rbf")
    sigmoid = CalibratedClassifierCV(FrozenEstimator(SVC(kernel="sigmoid").fit(X, y)), method="temperature").fit(X, y)
    with pytest.raises(NotConvertibleError, match="only RBF and polynomial SVCs.*kernel='sigmoid'"):
        to_keras_layers(sigmoid, "svm_rbf")


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


def test_an_out_of_core_head_is_refused_by_name_not_by_a_missing_attribute():
    from pipeline.heads.streaming import StreamingLinearHead

    X, y = _data(3)
    head = StreamingLinearHead(loss="log_loss", epochs=1).fit(X, y)
    with pytest.raises(NotConvertibleError, match="StreamingLinearHead has no exact Keras form"):
        to_keras_layers(head, "logreg")
