"""Many dense heads trained as one Keras model: one input pipeline, one compiled step per epoch.

A sweep's dense variants read the same rows (one feature set: its poolings,
standardisations and PCAs are different columns of the same images, with the
same labels). :func:`fit_dense_heads` trains them together, as DINOv2's
evaluation trains its linear heads: one ``keras.Model`` with one input per
distinct matrix and one branch per head, ``[Dense(relu)] → [Dropout] →
Dense(softmax)``, each with its own output and loss (Keras sums them, so each
branch's gradient is that of its own loss). One ``tf.data`` pipeline feeds every
branch, and one compiled call runs a whole epoch for all of them.

Each branch is trained as :class:`~pipeline.heads.dense.DenseHead` would train
it alone, so the results are the same:

* the same rows held out for early stopping (the same stratified, seeded split)
  and the same shuffle order (the same seeded pipeline: the order depends on
  the seed and the row count only);
* the same initial weights and dropout masks: each branch's layers are made by
  :func:`~pipeline.heads.dense.network_layers` right after
  ``keras.utils.set_random_seed`` of the head's seed, so they draw the seeds a
  lone network draws;
* its own early stopping: after every epoch :class:`_BranchStopping` reads the
  branch's own held-out loss, keeps its best weights, and marks it done when its
  patience runs out or it reaches its own ``epochs``; training stops when every
  branch is done, and each keeps its best weights (the last ones without early
  stopping), its ``n_epochs_`` and its ``loss_curve_``.

A done branch is carried along (its later updates are discarded): one pass for
all. Heads are grouped into one model per learning rate (one Adam each, so the
optimiser is a lone head's), seed, batch size and held-out split; a sweep's
dense heads differ in none of these but the learning rate. The fitted heads are
ordinary :class:`DenseHead` objects (numpy ``coefs_``/``intercepts_``), so
prediction, saving and export do not change. ``tests/test_dense_batch.py``
checks that batched and lone fits give the same probabilities.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import keras
import numpy as np

from pipeline.heads.dense import DenseHead, _repeated, network_layers

log = logging.getLogger(__name__)


@dataclass
class _Branch:
    """One head's place in the batched model and its early-stopping state."""

    head: DenseHead
    output: str             # prefix of its loss in the logs of fit: "b3_probabilities_" ("" when alone)
    layers: list = field(default_factory=list)   # its Dense layers, hidden first
    best: Optional[float] = None
    wait: int = 0
    weights: Optional[list[np.ndarray]] = None   # kernels and biases kept (best, or last when done)
    loss_curve: list[float] = field(default_factory=list)
    done: bool = False

    def current_weights(self) -> list[np.ndarray]:
        return [np.array(keras.ops.convert_to_numpy(w), np.float32) for layer in self.layers
                for w in (layer.kernel, layer.bias)]


class _BranchStopping(keras.callbacks.Callback):
    """Per-branch early stopping with ``EarlyStopping(restore_best_weights=True)``'s rules; stops when all are done."""

    def __init__(self, branches: Sequence[_Branch], held_out: bool):
        super().__init__()
        self.branches = branches
        self.held_out = held_out

    def on_epoch_end(self, epoch, logs=None):
        for branch in (b for b in self.branches if not b.done):
            branch.loss_curve.append(float(logs[f"{branch.output}loss"]))
            if self.held_out:
                loss = float(logs[f"val_{branch.output}loss"])
                if branch.best is None or loss < branch.best:
                    branch.best, branch.wait, branch.weights = loss, 0, branch.current_weights()
                else:
                    branch.wait += 1
                branch.done = branch.wait >= branch.head.patience and epoch > 0
            if epoch + 1 >= branch.head.epochs:
                branch.done = True
            if branch.done and not self.held_out:
                branch.weights = branch.current_weights()
        if all(b.done for b in self.branches):
            self.model.stop_training = True


def fit_dense_heads(heads: Sequence[DenseHead], inputs: Sequence[np.ndarray], y: np.ndarray) -> list[DenseHead]:
    """Fit ``heads[i]`` on ``inputs[i]``, all with labels ``y``, as few batched Keras models.

    Parameters
    ----------
    heads : sequence of DenseHead
        Unfitted; fitted in place.
    inputs : sequence of ndarray, each of shape (n_samples, n_features_i)
        One per head, the same rows in the same order; heads given the same
        array object share one model input.
    y : ndarray of shape (n_samples,)

    Returns
    -------
    list of DenseHead
        The same heads, fitted, as if each had been fitted alone (see the module docstring).

    Raises
    ------
    ValueError
        If the counts or rows disagree, a head is not a DenseHead, or an input holds views.
    """
    if len(heads) != len(inputs):
        raise ValueError(f"fit_dense_heads needs one input per head. Received: {len(heads)} heads, "
                         f"{len(inputs)} inputs")
    groups: dict[tuple, list] = {}
    for head, X in zip(heads, inputs):
        if not isinstance(head, DenseHead):
            raise ValueError(f"fit_dense_heads fits DenseHead objects only. Received: {type(head).__name__}")
        if getattr(X, "ndim", None) != 2 or len(X) != len(y):
            raise ValueError(f"fit_dense_heads needs inputs of shape (n_samples={len(y)}, n_features); views "
                             f"(n, n_views, n_features) are fitted by DenseHead.fit alone. "
                             f"Received: shape {getattr(X, 'shape', None)}")
        clean, _, encoded = head._validate_training(X, y)
        fit_rows, held_rows = head.held_out_rows(encoded)
        split = None if held_rows is None else held_rows.tobytes()
        key = (float(head.learning_rate), head.random_state, head.batch_size, split)
        groups.setdefault(key, []).append((head, X, clean, encoded, fit_rows, held_rows))
    for members in groups.values():
        _fit_group(members)
    log.debug("%d dense heads trained as %d batched models", len(heads), len(groups))
    return list(heads)


def _fit_group(members: list[tuple]) -> None:
    """Train heads that share learning rate, seed, batch size and held-out split as one model."""
    first, _, _, encoded, fit_rows, held_rows = members[0]
    n_classes = len(first.classes_)
    slots: dict[int, int] = {}           # id(input array) → model input, so a shared matrix is fed once
    matrices: list[np.ndarray] = []
    for _, X, clean, *_ in members:
        if id(X) not in slots:
            slots[id(X)] = len(matrices)
            matrices.append(clean)
    model_inputs = [keras.Input((m.shape[1],), name=f"input{i}") for i, m in enumerate(matrices)]
    branches, outputs = [], []
    for index, (head, X, *_) in enumerate(members):
        keras.utils.set_random_seed(head.random_state)   # the seeds a lone head's layers draw
        layers = network_layers(n_classes, hidden_units=head.hidden_units, dropout=head.dropout, prefix=f"b{index}_")
        x = model_inputs[slots[id(X)]]
        for layer in layers:
            x = layer(x)
        outputs.append(x)
        # Keras logs each output's loss under its name, or only the total when there is one output.
        output = f"b{index}_probabilities_" if len(members) > 1 else ""
        branches.append(_Branch(head, output=output,
                                layers=[layer for layer in layers if isinstance(layer, keras.layers.Dense)]))
    model = keras.Model(model_inputs, outputs, name="dense_heads")
    steps = math.ceil(len(fit_rows) / first.batch_size)
    model.compile(optimizer=keras.optimizers.Adam(first.learning_rate),
                  loss=["sparse_categorical_crossentropy"] * len(outputs), steps_per_execution=steps)
    labels = tuple([encoded] * len(outputs))

    def rows(selected: np.ndarray) -> tuple[Any, Any]:
        return tuple(m[selected] for m in matrices), tuple(label[selected] for label in labels)

    validation = {}
    if held_rows is not None:
        validation = {"validation_data": _repeated(rows(held_rows), batch_size=len(held_rows), seed=None),
                      "validation_steps": 1}
    stopping = _BranchStopping(branches, held_out=held_rows is not None)
    model.fit(_repeated(rows(fit_rows), batch_size=first.batch_size, seed=first.random_state),
              epochs=max(b.head.epochs for b in branches), steps_per_epoch=steps, callbacks=[stopping], verbose=0,
              shuffle=False, **validation)
    for branch in branches:
        weights = branch.weights if branch.weights is not None else branch.current_weights()
        head = branch.head
        head.coefs_, head.intercepts_ = weights[0::2], weights[1::2]
        head.loss_curve_ = branch.loss_curve
        head.n_epochs_ = len(branch.loss_curve)
