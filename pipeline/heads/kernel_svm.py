"""The RBF SVM head: scikit-learn's ``SVC``, fitted on a kernel matrix computed once per training matrix.

libsvm evaluates the RBF kernel itself, one pair of rows at a time in plain
loops, and its cache does not outlive a fit: every C of a grid, and every fold
of a cross-validation, computes the same kernel values again. For the few
hundred training rows of a small image dataset the whole kernel matrix is
small (n × n: 614 rows, 3 MB), and BLAS computes it in milliseconds.

:class:`KernelMatrixSVC` therefore computes ``K = exp(-γ ‖xᵢ - xⱼ‖²)`` in
float64 with one matrix product, once per training matrix and γ
(:func:`rbf_kernel_matrix`; the C values of a grid share it), and hands it to
libsvm as a precomputed kernel: the same dual problem, solved by the same SMO.
It then keeps the support vectors (the rows the solution uses) and γ as an
RBF ``SVC`` does, so the fitted head predicts, saves and exports exactly as
an ``SVC(kernel="rbf")`` (``tests/test_kernel_svm.py``: the same support,
dual coefficients and decisions to 1e-6). Fits are 2.5–7× faster on this
project's feature sets (``BENCHMARKS.md``). Any other kernel, sparse input or
``probability=True`` is ``SVC`` as is.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from sklearn.svm import SVC
from sklearn.utils.validation import check_array

from pipeline.heads.matrix_cache import MatrixCache

__all__ = ["KernelMatrixSVC", "rbf_kernel_matrix"]

_KERNELS = MatrixCache(kept=4)  # the last kernel matrices, by training matrix and γ


def resolved_gamma(gamma: float | str, X: np.ndarray) -> float:
    """γ as ``SVC`` resolves it: ``"scale"`` is 1 / (n_features · X.var()), ``"auto"`` 1 / n_features."""
    if gamma == "scale":
        variance = float(X.var())
        return 1.0 / (X.shape[1] * variance) if variance != 0 else 1.0
    if gamma == "auto":
        return 1.0 / X.shape[1]
    return float(gamma)


def rbf_kernel_matrix(X: np.ndarray, gamma: float, *, source: object | None = None) -> np.ndarray:
    """``exp(-γ ‖xᵢ - xⱼ‖²)`` of the rows of ``X`` (float64), computed once per matrix object and γ.

    ``source``: the array the caller was given (a memory map shared by the fits
    of a grid), by whose identity the matrix is kept
    (:class:`~pipeline.heads.matrix_cache.MatrixCache`).
    """
    return _KERNELS.get(X if source is None else source, gamma, lambda: _rbf(X, gamma))


def _rbf(X: np.ndarray, gamma: float) -> np.ndarray:
    squared = np.einsum("ij,ij->i", X, X)
    distances = squared[:, None] + squared[None, :] - 2.0 * (X @ X.T)
    np.maximum(distances, 0.0, out=distances)  # rounding can make a distance slightly negative
    np.fill_diagonal(distances, 0.0)
    return np.exp(-gamma * distances)


class KernelMatrixSVC(SVC):
    """``SVC`` with the same parameters; an RBF fit on dense rows is solved on the kernel matrix.

    Parameters are ``SVC``'s (see its documentation). The fitted estimator is an
    RBF ``SVC`` in every attribute prediction, saving and export read.
    """

    def fit(self, X, y, sample_weight=None):
        """Fit on ``X`` of shape (n_samples, n_features); returns self."""
        given = X
        X = check_array(X, accept_sparse="csr", dtype=np.float64, order="C")
        # probability may be scikit-learn's "deprecated" sentinel (a true value that means False)
        if self.kernel != "rbf" or scipy.sparse.issparse(X) or self.probability is True:
            return super().fit(X, y, sample_weight=sample_weight)
        gamma = resolved_gamma(self.gamma, X)
        source = given if isinstance(given, np.ndarray) and given.shape == X.shape else X
        K = rbf_kernel_matrix(X, gamma, source=source)
        params = {**self.get_params(), "kernel": "precomputed"}
        fitted = SVC(**params).fit(K, y, sample_weight=sample_weight)
        settings = set(self.get_params())
        self.__dict__.update({name: value for name, value in fitted.__dict__.items() if name not in settings})
        # What an RBF SVC keeps: its support vectors (rows of X), γ, and the shape of X.
        self.support_vectors_ = X[self.support_]
        self._gamma = gamma
        self.shape_fit_ = X.shape
        self.n_features_in_ = X.shape[1]
        if hasattr(given, "columns"):
            self.feature_names_in_ = np.asarray(given.columns, dtype=object)
        else:
            self.__dict__.pop("feature_names_in_", None)
        return self
