"""The RBF SVM fitted on a kernel matrix is scikit-learn's RBF SVC: same support, dual coefficients and decisions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import SVC

from pipeline.heads import kernel_svm
from pipeline.heads.kernel_svm import KernelMatrixSVC, rbf_kernel_matrix


def _wide_blobs(n_classes: int, n_per_class: int = 30, n_features: int = 200, seed: int = 0):
    """Fewer rows than columns, as pooled features of a small image dataset."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.4, size=(n_classes, n_features))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = (centres[y] + rng.normal(size=(len(y), n_features))).astype(np.float32)
    return X, y


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("gamma", ["scale", "auto", 0.003])
@pytest.mark.parametrize("C", [0.5, 10.0])
def test_a_kernel_matrix_fit_is_the_rbf_svc(n_classes, gamma, C):
    X, y = _wide_blobs(n_classes)
    X_new, _ = _wide_blobs(n_classes, seed=1)
    ours = KernelMatrixSVC(C=C, gamma=gamma, random_state=0).fit(X, y)
    theirs = SVC(C=C, gamma=gamma, random_state=0).fit(X, y)
    np.testing.assert_array_equal(ours.support_, theirs.support_)
    np.testing.assert_allclose(ours.dual_coef_, theirs.dual_coef_, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=1e-6)
    np.testing.assert_allclose(ours.support_vectors_, theirs.support_vectors_)
    assert ours._gamma == pytest.approx(theirs._gamma, rel=1e-12)
    np.testing.assert_allclose(ours.decision_function(X_new), theirs.decision_function(X_new), atol=1e-6)
    np.testing.assert_array_equal(ours.predict(X_new), theirs.predict(X_new))
    assert ours.kernel == "rbf" and ours.n_features_in_ == X.shape[1] and ours.shape_fit_ == X.shape


def test_the_c_values_of_a_grid_share_one_kernel_matrix_of_the_same_array(monkeypatch):
    X, y = _wide_blobs(3)
    computed = []
    exp = np.exp
    monkeypatch.setattr(kernel_svm.np, "exp", lambda a: computed.append(a.shape) or exp(a))
    for C in (0.1, 1.0, 10.0):
        KernelMatrixSVC(C=C).fit(X, y)
    assert computed == [(len(X), len(X))]  # once for the three C values
    KernelMatrixSVC(C=1.0).fit(X.copy(), y)  # another array: its own matrix
    assert len(computed) == 2
    K = rbf_kernel_matrix(X.astype(np.float64), 0.01)
    assert np.allclose(np.diag(K), 1.0) and np.allclose(K, K.T)


@pytest.mark.filterwarnings("ignore:The `probability` parameter was deprecated:FutureWarning")
def test_other_kernels_and_probabilities_are_svc_as_is():
    X, y = _wide_blobs(3)
    for options in ({"kernel": "poly", "degree": 2}, {"kernel": "linear"}, {"probability": True}):
        ours = KernelMatrixSVC(random_state=0, **options).fit(X, y)
        theirs = SVC(random_state=0, **options).fit(X, y)
        np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X), atol=1e-8)
    with pytest.raises(ValueError, match="NaN"):
        KernelMatrixSVC().fit(np.full((4, 3), np.nan), [0, 1, 0, 1])
