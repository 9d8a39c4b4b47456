"""A 2-D map of a feature set: t-SNE (scikit-learn) of the pooled, standardised features, after PCA to 50.

Why t-SNE and not UMAP: scikit-learn's ``TSNE`` is already installed, while
umap-learn pulls numba, llvmlite and pynndescent (its first call also spends
seconds compiling); on the few hundred to few thousand images this project is
for, Barnes-Hut t-SNE takes seconds and shows the same thing people look for —
which classes form clusters, which images sit in another class's cluster. Like
any t-SNE map, distances between clusters mean little; neighbourhoods do.
(BENCHMARKS.md has the timing.)
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

#: Dimensions kept by PCA before t-SNE (scikit-learn's advice for dense features).
PCA_DIMENSIONS = 50


def project(X: np.ndarray, *, max_iter: int, seed: int) -> np.ndarray:
    """2-D t-SNE coordinates of the rows of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    max_iter : int
        t-SNE iterations (scikit-learn needs at least 250).
    seed : int

    Returns
    -------
    ndarray of shape (n_samples, 2)
    """
    X = StandardScaler().fit_transform(np.asarray(X, np.float64))
    n = len(X)
    if n < 3:
        raise ValueError(f"a map needs at least 3 images; received {n}")
    keep = min(PCA_DIMENSIONS, n - 1, X.shape[1])
    if keep < X.shape[1]:
        X = PCA(n_components=keep, random_state=seed).fit_transform(X)
    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(
        n_components=2, perplexity=perplexity, max_iter=max_iter, init="pca", random_state=seed, n_jobs=1
    ).fit_transform(X)
