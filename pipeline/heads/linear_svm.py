"""The linear SVM head: scikit-learn's ``LinearSVC``, fitted in the row space of its training rows when they are few.

Small image datasets give wide matrices: a few hundred training rows of 1,280
to several thousand pooled features. liblinear's dual coordinate descent
(what ``LinearSVC`` runs when rows are fewer than columns) touches every
column of a row at each step, so its cost grows with the width, while the
problem it solves depends on the rows only through their inner products:
with an L2 penalty the solution ``w`` lies in the span of the training rows
(the representer theorem), and the dual is written in ``X Xᵀ`` alone
(liblinear's intercept is one more constant column, kept as it is).

:class:`RowSpaceLinearSVC` therefore fits on ``Z = X Q``, where ``Xᵀ = Q R``
is a thin QR decomposition (``Q`` of shape (n_features, n_samples) with
orthonormal columns, so ``Z = Rᵀ`` and ``Z Zᵀ = X Xᵀ``): the same dual, the
same coordinate order (same ``random_state``), the same iterations, on
n_samples columns instead of n_features. The decomposition is made once per
training matrix (:func:`row_space`): a search fits one matrix at many C, and
the QR cost more than most of those fits. The fitted ``coef_`` is mapped back
(``coef_Z Qᵀ``), so the head is an ordinary ``LinearSVC`` on the full features
for prediction, saving and export. Equal to ``LinearSVC`` fitted on ``X`` to
float64 rounding (``tests/test_linear_svm.py``); 2–4× faster on this
project's feature sets (``BENCHMARKS.md``). With as many rows as columns, or an
L1 penalty (whose solution is not in the row span), it is ``LinearSVC`` as is.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_array

from pipeline.heads.matrix_cache import MatrixCache

__all__ = ["RowSpaceLinearSVC", "row_space"]

_BASES = MatrixCache(kept=8)  # the last matrices decomposed


def row_space(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Q, R`` of the thin QR decomposition ``Xᵀ = Q R`` in float64, computed once per matrix object.

    Fits of one training matrix at many C (a search, a path) share it
    (:class:`~pipeline.heads.matrix_cache.MatrixCache`).
    """
    return _BASES.get(X, "qr", lambda: np.linalg.qr(X.T.astype(np.float64, copy=False)))


class RowSpaceLinearSVC(LinearSVC):
    """``LinearSVC`` with the same parameters, solved on n_samples columns when n_samples < n_features.

    Parameters are ``LinearSVC``'s (see its documentation); ``dual="auto"``
    decides on the shape of ``X`` as given, not of the reduced matrix.
    """

    def fit(self, X, y, sample_weight=None):
        """Fit on ``X`` of shape (n_samples, n_features); returns self, with ``coef_`` of shape (n_classes or 1, n_features)."""
        # scikit-learn's checks first (shape, NaN/inf, named in its messages): a QR would not name them.
        given = X
        X = check_array(X, accept_sparse="csr", dtype=(np.float64, np.float32))
        if scipy.sparse.issparse(X) or self.penalty != "l2" or X.shape[0] >= X.shape[1]:
            return super().fit(X, y, sample_weight=sample_weight)
        n_features = X.shape[1]
        # The matrix as given (a memory map shared by a search's fits), so that its decomposition is reused.
        source = given if isinstance(given, np.ndarray) and given.shape == X.shape else X
        Q, R = row_space(source)  # Xᵀ = Q R, so X Q = Rᵀ
        dual = self.dual
        # "auto" would see a square matrix and pick the primal; for X (fewer rows than columns) it picks the dual.
        self.dual = True if dual == "auto" else dual
        try:
            super().fit(np.ascontiguousarray(R.T), y, sample_weight=sample_weight)
        finally:
            self.dual = dual
        self.coef_ = self.coef_ @ Q.T
        self.n_features_in_ = n_features
        return self
