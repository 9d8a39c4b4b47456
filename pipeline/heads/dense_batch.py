"""Many dense heads fitted as one batch: each on its own input and labels, as if alone.

:func:`fit_dense_heads` is the dense kind's ``fit_together`` (the registry):
the sweep hands it every dense variant × fold of a feature set, each with its
own matrix and labels, and it trains them as members of one compiled program
per shape (:mod:`pipeline.heads.dense_training`, which says how each member is
trained exactly as :meth:`DenseHead.fit <pipeline.heads.dense.DenseHead.fit>`
trains it alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.heads.dense import DenseHead
from pipeline.heads.dense_training import prepared_member, train_members


def fit_dense_heads(
    heads: Sequence[DenseHead], inputs: Sequence[np.ndarray], y: np.ndarray | Sequence[np.ndarray]
) -> list[DenseHead]:
    """Fit ``heads[i]`` on ``inputs[i]`` as one batched program per shape, each as if alone.

    Parameters
    ----------
    heads : sequence of DenseHead
        Unfitted; fitted in place.
    inputs : sequence of ndarray, each of shape (n_samples_i, n_features_i)
        One per head; heads given the same array object share one copy on the device.
    y : ndarray of shape (n_samples,), or one such array per head
        The labels: one array for every input (the same rows), or each head's
        own (the folds of a cross-validation, say).

    Returns
    -------
    list of DenseHead
        The same heads, fitted, as if each had been fitted alone.

    Raises
    ------
    ValueError
        If the counts or rows disagree, a head is not a DenseHead, or an input holds views.
    """
    if len(heads) != len(inputs):
        raise ValueError(
            f"fit_dense_heads needs one input per head. Received: {len(heads)} heads, {len(inputs)} inputs"
        )
    labels = list(y) if isinstance(y, (list, tuple)) else [y] * len(heads)
    if len(labels) != len(heads):
        raise ValueError(
            f"fit_dense_heads needs one label array, or one per head. Received: {len(heads)} heads, "
            f"{len(labels)} label arrays"
        )
    matrices: list[np.ndarray] = []
    slots: dict[int, int] = {}
    members = []
    for head, X, y_head in zip(heads, inputs, labels):
        if not isinstance(head, DenseHead):
            raise ValueError(f"fit_dense_heads fits DenseHead objects only. Received: {type(head).__name__}")
        if getattr(X, "ndim", None) != 2 or len(X) != len(y_head):
            raise ValueError(
                f"fit_dense_heads needs inputs of shape (n_samples={len(y_head)}, n_features); views "
                f"(n, n_views, n_features) are fitted by DenseHead.fit alone. "
                f"Received: shape {getattr(X, 'shape', None)}"
            )
        clean, _, encoded = head._validate_training(X, y_head)
        slot = (id(X), id(y_head))  # a matrix on the device holds its rows' labels too
        if slot not in slots:
            slots[slot] = len(matrices)
            matrices.append(clean)
        members.append(prepared_member(head, slots[slot], encoded))
    train_members(members, matrices)
    return list(heads)
