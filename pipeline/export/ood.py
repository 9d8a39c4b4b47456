"""Out of domain: is an image's feature vector far from every training image's?

A head answers every input with some class, often confidently: a hand-sign photo given to an
ants-vs-bees model gets "bees 1.000". The exported model therefore comes with ``ood.keras``, a
small Keras graph (safe mode, like ``model.keras``) from the pooled features the head reads to one
score: the cosine distance to the ``k``-th nearest training image (deep nearest neighbours, Sun et
al., ICML 2022: L2-normalised features, k-th neighbour distance; no training, no labels needed).
The threshold is the ``percentile``-th percentile of that distance over the validation images (so
about ``100 - percentile`` % of in-domain images are flagged by construction); an input beyond it is
out of domain. ``k`` and the percentile are ``export.ood_k`` and ``export.ood_percentile``; the
threshold and what it flags on validation and test are on the model card.

The training images' normalised features are the weights of one Dense layer of ``ood.keras``
(``n_train × n_features`` float32: 630 × 192, 0.5 MB, for the default run's chosen ``lite0_block6``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

OOD_FILE = "ood.keras"
METHOD = (
    "cosine distance to the k-th nearest training image, on L2-normalised pooled features "
    "(deep nearest neighbours, Sun et al. 2022)"
)


def build_ood_model(train_features: np.ndarray, k: int) -> Any:
    """Pooled features ``(n, n_features)`` → distance to the ``k``-th nearest training image ``(n,)``.

    Parameters
    ----------
    train_features : ndarray of shape (n_train, n_features)
        The pooled features of the training images (as the head was trained on).
    k : int
        Which neighbour; at most ``n_train``.

    Raises
    ------
    ValueError
        If ``k`` exceeds the training images.
    """
    import keras

    from pipeline.export.layers import KthNearestDistance

    bank = np.asarray(train_features, np.float32)
    if not 1 <= k <= len(bank):
        raise ValueError(
            f"export.ood_k={k} needs at least {k} training images; there are {len(bank)}. Use a smaller export.ood_k"
        )
    bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    inputs = keras.Input((bank.shape[1],), dtype="float32", name="features")
    x = keras.layers.UnitNormalization(axis=-1, name="ood_normalise")(inputs)
    similarity = keras.layers.Dense(len(bank), use_bias=False, trainable=False, name="ood_training_images")
    x = similarity(x)
    similarity.set_weights([bank.T])
    outputs = KthNearestDistance(k, name="ood_distance")(x)
    return keras.Model(inputs, outputs, name="shoulders_ood")


def ood_distances(model: Any, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The out-of-domain score of each row of ``features`` ``(n, n_features)``: shape ``(n,)``."""
    if not len(features):
        return np.zeros(0, np.float32)
    return np.asarray(
        model.predict(np.asarray(features, np.float32), batch_size=batch_size, verbose=0), np.float32
    ).reshape(-1)


def ood_card(
    *,
    k: int,
    percentile: float,
    val_distances: np.ndarray,
    test_distances: np.ndarray,
    train_images: int,
    features_layer: str,
) -> dict:
    """The card's ``out_of_domain`` entry: method, k, percentile, threshold and the share flagged on val and test.

    Raises
    ------
    ValueError
        Without validation images (the threshold is a percentile of theirs).
    """
    if not len(val_distances):
        raise ValueError(
            "the out-of-domain threshold is a percentile of the validation images' distances, and "
            "there are none: give the dataset a validation split (data.split.val > 0)"
        )
    threshold = float(np.percentile(val_distances, percentile))
    return {
        "file": OOD_FILE,
        "method": METHOD,
        "k": k,
        "percentile": percentile,
        "threshold": threshold,
        "training_images": int(train_images),
        "features_layer": features_layer,
        "flagged_validation": float(np.mean(val_distances > threshold)),
        "flagged_test": float(np.mean(test_distances > threshold)) if len(test_distances) else None,
    }
