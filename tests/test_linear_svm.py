"""The linear SVM head solved in the row space of wide training matrices equals scikit-learn's LinearSVC on them."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.svm import LinearSVC

from pipeline.heads.linear_svm import RowSpaceLinearSVC


def wide(n_samples: int, n_features: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, n_features))
    y = np.arange(n_samples) % n_classes
    X = centres[y] + rng.normal(scale=3.0, size=(n_samples, n_features))
    return X.astype(np.float32), y


@pytest.mark.parametrize("n_classes", [2, 5])
@pytest.mark.parametrize("C", [1e-4, 0.1, 10.0])
def test_wide_matrix_gives_linear_svc_solution(n_classes, C):
    X, y = wide(80, 400, n_classes)
    plain = LinearSVC(C=C, random_state=3).fit(X, y)
    reduced = RowSpaceLinearSVC(C=C, random_state=3).fit(X, y)
    assert reduced.coef_.shape == plain.coef_.shape == ((1 if n_classes == 2 else n_classes), 400)
    assert reduced.n_features_in_ == 400
    np.testing.assert_array_equal(reduced.n_iter_, plain.n_iter_)  # the same coordinate descent
    scale = np.abs(plain.coef_).max()
    np.testing.assert_allclose(reduced.coef_, plain.coef_, atol=1e-6 * scale)
    np.testing.assert_allclose(reduced.intercept_, plain.intercept_, atol=1e-6 * max(1.0, scale))
    X_new, _ = wide(40, 400, n_classes, seed=1)
    np.testing.assert_allclose(reduced.decision_function(X_new), plain.decision_function(X_new), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(reduced.predict(X_new), plain.predict(X_new))
    assert reduced.dual == "auto"  # the parameter it was given, after fitting on the square reduction


def test_the_reduction_is_not_a_no_op():
    # A fit on a matrix projected onto a random subspace of the same width would not agree: what the
    # equality above rests on is that Q spans the rows of X.
    X, y = wide(60, 300, 3)
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.normal(size=(300, 60)))
    other = LinearSVC(C=1.0, random_state=0).fit(X @ Q, y)
    reduced = RowSpaceLinearSVC(C=1.0, random_state=0).fit(X, y)
    assert not np.allclose(other.coef_ @ Q.T, reduced.coef_, atol=1e-3)


@pytest.mark.parametrize("settings", [{"penalty": "l1", "dual": False}, {}])
def test_tall_matrix_or_l1_penalty_is_linear_svc_as_is(settings):
    X, y = wide(80, 400, 3) if settings else wide(500, 40, 3)
    plain = LinearSVC(C=0.5, random_state=0, **settings).fit(X, y)
    same = RowSpaceLinearSVC(C=0.5, random_state=0, **settings).fit(X, y)
    np.testing.assert_array_equal(same.coef_, plain.coef_)
    np.testing.assert_array_equal(same.intercept_, plain.intercept_)


def test_parameters_clone_as_linear_svc():
    head = RowSpaceLinearSVC(C=0.3, random_state=2)
    copy = clone(head)
    assert isinstance(copy, LinearSVC) and copy.get_params() == head.get_params()
    assert copy.set_params(C=3.0).C == 3.0


def test_bad_rows_get_scikit_learns_message_not_a_linear_algebra_error():
    X, y = wide(20, 100, 2)
    X[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RowSpaceLinearSVC().fit(X, y)
