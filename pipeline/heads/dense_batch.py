"""Many dense heads trained as one Keras model: one input pipeline, one compiled step per epoch.

A sweep's dense variants read the same rows (one feature set: its poolings,
standardisations and PCAs are different columns of the same images, with the
same labels). :func:`fit_dense_heads` trains them together, as DINOv2's
evaluation trains its linear heads: one ``keras.Model`` with one input per
distinct matrix, each head a branch ``[Dense(relu)] → [Dropout] →
Dense(softmax)`` with its own weights and loss (Keras sums the losses, so each
branch's gradient is that of its own loss). One ``tf.data`` pipeline feeds every
branch, and one compiled call runs a whole epoch for all of them.

The branches of one hidden width on one input are one :class:`_Stack`: their
kernels side by side, so a layer is one matmul for all of them. Tracing the
compiled epoch costs about 0.6 s per separate branch on this project's CPUs
(the layers, losses and Adam updates of each), a stack of 8 about what one
branch costs.

Each branch is trained as :class:`~pipeline.heads.dense.DenseHead` would train
it alone, so the results are the same (to float32 rounding: the stacked matmuls
sum in another order; ``tests/test_dense_batch.py`` holds them to 1e-5):

* the same rows held out for early stopping (the same stratified, seeded split)
  and the same shuffle order (the same seeded pipeline: the order depends on
  the seed and the row count only);
* the same initial weights and dropout masks: each branch's lone layers are
  made by :func:`~pipeline.heads.dense.network_layers` right after
  ``keras.utils.set_random_seed`` of the head's seed (:func:`_lone_start`);
  their initial weights are copied into the stack and their ``Dropout`` layer,
  with the seed a lone head's draws, is applied to the branch's slice;
* the same weight decay (an L2 penalty on its own slices of the stacked kernels);
* its own losses (:class:`_MemberLosses`: the epoch's training cross-entropy, as a lone
  head's Keras computes it; the held-out loss from the epoch's weights, as a
  lone head's early stopping computes it: :func:`~pipeline.heads.dense.held_out_loss`)
  and its own early stopping: after every epoch :class:`_BranchStopping` reads
  the branch's held-out loss, keeps its best weights, and marks it done when its patience
  runs out or it reaches its own ``epochs``; training stops when every branch is
  done, and each keeps its best weights (the last ones without early stopping),
  its ``n_epochs_`` and its ``loss_curve_``.

A done branch is carried along (its later updates are discarded): one pass for
all. Heads are grouped into one model per learning rate (one Adam each, so the
optimiser is a lone head's), seed, batch size and held-out split; a sweep's
dense heads differ in none of these but the learning rate. The fitted heads are
ordinary :class:`DenseHead` objects (numpy ``coefs_``/``intercepts_``), so
prediction, saving and export do not change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import keras
import numpy as np

from pipeline.heads.dense import DenseHead, _repeated, forward_probabilities, held_out_loss, network_layers

log = logging.getLogger(__name__)


@dataclass
class _Branch:
    """One head's place in the batched model and its early-stopping state."""

    head: DenseHead
    name: str                                    # its training loss in the logs of fit: "<name>_loss"
    held_out: Optional[np.ndarray] = None        # its input's held-out rows (early stopping)
    stack: Any = None                            # the _Stack layer it is a member of
    member: int = 0                              # its index in that stack
    best: Optional[float] = None
    wait: int = 0
    weights: Optional[list[np.ndarray]] = None   # kernels and biases kept (best, or last when done)
    loss_curve: list[float] = field(default_factory=list)
    done: bool = False

    def current_weights(self) -> list[np.ndarray]:
        return self.stack.member_weights(self.member)

    def held_out_loss(self, weights: list[np.ndarray], labels: np.ndarray) -> float:
        """The loss of ``weights`` (kernels then biases) on the held-out rows, as a lone head's early stopping reads it."""
        return held_out_loss(forward_probabilities(self.held_out, *_coefs_intercepts(weights)), labels)


def _coefs_intercepts(weights: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Kernels then biases (a member's weights) as :class:`DenseHead`'s ``coefs_`` and ``intercepts_``."""
    n_layers = len(weights) // 2
    return weights[:n_layers], weights[n_layers:]


class _MemberPenalty:
    """Each member's L2 weight penalty on its part of a stacked kernel: ``Σ_m decay_m · Σ w_m²``.

    ``decays`` is one value per element along ``axis`` (a member's value
    repeated over its columns of the hidden kernel; one per member of the
    output kernel), so each member's gradient is a lone head's ``L2(decay)``'s.
    """

    def __init__(self, decays: np.ndarray, axis: int):
        self.decays, self.axis = decays.astype(np.float32), axis

    def __call__(self, kernel):
        ops = keras.ops
        other = tuple(a for a in range(len(kernel.shape)) if a != self.axis)
        return ops.sum(ops.sum(ops.square(kernel), axis=other) * self.decays)


class _Stack(keras.layers.Layer):
    """The branches of one width on one input, as stacked weights: one matmul per layer for all of them.

    Its hidden kernel is the members' kernels side by side, ``(n_features,
    members × hidden_units)``, its output kernel ``(members, hidden_units,
    n_classes)``: Adam updates every element on its own, so each member learns
    as its own layers would. Each member's dropout is its own lone head's
    ``Dropout`` layer (same seed, so the same masks), applied to its slice;
    its weight decay is an L2 penalty on its slices (:class:`_MemberPenalty`).
    Output: probabilities of shape (batch, members, n_classes).
    """

    def __init__(self, initial: list[list[np.ndarray]], dropouts: list, hidden_units: int, decays: list[float],
                 **kwargs):
        super().__init__(**kwargs)
        self.initial, self.dropouts, self.hidden_units, self.decays = initial, dropouts, hidden_units, decays

    def build(self, input_shape):
        kernels = list(zip(*self.initial))         # per layer: every member's array, kernels then biases
        penalised = any(self.decays)
        decays = np.asarray(self.decays, np.float32)
        if self.hidden_units:
            self.hidden_kernel = self._weight("hidden_kernel", np.concatenate(kernels[0], axis=1),
                                              _MemberPenalty(np.repeat(decays, self.hidden_units), axis=1)
                                              if penalised else None)
            self.hidden_bias = self._weight("hidden_bias", np.concatenate(kernels[2]))
            out_kernels, out_biases = kernels[1], kernels[3]
        else:
            out_kernels, out_biases = kernels[0], kernels[1]
        self.kernel = self._weight("kernel", np.stack(out_kernels), _MemberPenalty(decays, axis=0) if penalised else None)
        self.bias = self._weight("bias", np.stack(out_biases))
        self.initial = None

    def _weight(self, name: str, value: np.ndarray, regularizer=None):
        return self.add_weight(shape=value.shape, initializer=keras.initializers.Constant(value), name=name,
                               regularizer=regularizer)

    def call(self, x, training=False):
        ops, n = keras.ops, len(self.dropouts)
        if self.hidden_units:
            hidden = ops.relu(ops.matmul(x, self.hidden_kernel) + self.hidden_bias)
            parts = [hidden[:, i * self.hidden_units:(i + 1) * self.hidden_units] for i in range(n)]
        else:
            parts = [x] * n
        parts = [part if drop is None else drop(part, training=training) for part, drop in zip(parts, self.dropouts)]
        logits = ops.einsum("bnh,nhc->bnc", ops.stack(parts, axis=1), self.kernel) + self.bias
        return ops.softmax(logits, axis=-1)

    def member_weights(self, member: int) -> list[np.ndarray]:
        """One member's kernels then biases, as :class:`DenseHead` keeps them (``coefs_ + intercepts_``)."""
        return self.members_weights()[member]

    def members_weights(self) -> list[list[np.ndarray]]:
        """Every member's :meth:`member_weights`, each variable read once (early stopping reads all every epoch)."""
        def value(variable):
            return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)

        kernel, bias = value(self.kernel), value(self.bias)
        if not self.hidden_units:
            return [[kernel[m].copy(), bias[m].copy()] for m in range(len(self.dropouts))]
        hidden_kernel, hidden_bias, width = value(self.hidden_kernel), value(self.hidden_bias), self.hidden_units
        return [[hidden_kernel[:, m * width:(m + 1) * width].copy(), kernel[m].copy(),
                 hidden_bias[m * width:(m + 1) * width].copy(), bias[m].copy()] for m in range(len(self.dropouts))]


class _MemberLosses(keras.metrics.Metric):
    """Each member's cross-entropy over an epoch (mean over rows), logged as ``<name>_loss`` per member.

    The mean over rows is a lone head's training loss (Keras weighs each batch
    by its size).
    """

    def __init__(self, names: list[str], **kwargs):
        super().__init__(**kwargs)
        self.names = names
        self.total = self.add_variable(shape=(len(names),), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        losses = _member_crossentropy(y_true, y_pred)
        self.total.assign_add(ops.sum(losses, axis=0))
        self.count.assign_add(ops.cast(ops.shape(losses)[0], self.count.dtype))

    def result(self):
        return {f"{name}_loss": self.total[i] / self.count for i, name in enumerate(self.names)}

    def reset_state(self):
        self.total.assign(keras.ops.zeros_like(self.total))
        self.count.assign(0.0)


def _member_crossentropy(y_true, y_pred):
    """Sparse cross-entropy of each row for each member: labels (batch,), probabilities (batch, members, classes)."""
    ops = keras.ops
    labels = ops.broadcast_to(ops.reshape(ops.cast(y_true, "int32"), (-1, 1)), ops.shape(y_pred)[:2])
    return keras.losses.sparse_categorical_crossentropy(labels, y_pred)


def _stack_loss(y_true, y_pred):
    # Summed over members, averaged over rows by Keras: the sum of the members' own losses.
    return keras.ops.sum(_member_crossentropy(y_true, y_pred), axis=1)


class _BranchStopping(keras.callbacks.Callback):
    """Per-branch early stopping with ``EarlyStopping(restore_best_weights=True)``'s rules; stops when all are done.

    Each branch's held-out loss is computed as a lone head's is
    (:func:`pipeline.heads.dense.held_out_loss`, from the epoch's weights);
    ``held_labels`` is None without early stopping.
    """

    def __init__(self, branches: Sequence[_Branch], held_labels: Optional[np.ndarray]):
        super().__init__()
        self.branches = branches
        self.held_labels = held_labels

    def on_epoch_end(self, epoch, logs=None):
        held_out = self.held_labels is not None
        read: dict[int, list] = {}         # each stack's weights, read once this epoch
        for branch in (b for b in self.branches if not b.done):
            branch.loss_curve.append(float(logs[f"{branch.name}_loss"]))
            if held_out:
                weights = read.setdefault(id(branch.stack), branch.stack.members_weights())[branch.member]
                loss = branch.held_out_loss(weights, self.held_labels)
                if branch.best is None or loss < branch.best:
                    branch.best, branch.wait, branch.weights = loss, 0, weights
                else:
                    branch.wait += 1
                branch.done = branch.wait >= branch.head.patience and epoch > 0
            if epoch + 1 >= branch.head.epochs:
                branch.done = True
            if branch.done and not held_out:
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
    stacks: dict[tuple[int, int], list[int]] = {}      # (input, hidden units) → members
    for index, (head, X, clean, *_) in enumerate(members):
        if id(X) not in slots:
            slots[id(X)] = len(matrices)
            matrices.append(clean)
        stacks.setdefault((slots[id(X)], head.hidden_units), []).append(index)
    branches = [_Branch(head, name=f"branch{index}") for index, (head, *_) in enumerate(members)]
    model_inputs = [keras.Input((m.shape[1],), name=f"input{i}") for i, m in enumerate(matrices)]
    outputs, metrics = [], []
    for number, ((slot, hidden_units), indices) in enumerate(stacks.items()):
        initial, dropouts = [], []
        for index in indices:
            weights, dropout = _lone_start(branches[index].head, matrices[slot].shape[1], n_classes)
            initial.append(weights)
            dropouts.append(dropout)
        stack = _Stack(initial, dropouts, hidden_units, [float(branches[i].head.weight_decay) for i in indices],
                       name=f"stack{number}")
        outputs.append(stack(model_inputs[slot]))
        for member, index in enumerate(indices):
            branches[index].stack, branches[index].member = stack, member
        metrics.append([_MemberLosses([branches[i].name for i in indices], name=f"stack{number}_members")])
    model = keras.Model(model_inputs, outputs, name="dense_heads")
    steps = math.ceil(len(fit_rows) / first.batch_size)
    model.compile(optimizer=keras.optimizers.Adam(first.learning_rate), loss=[_stack_loss] * len(outputs),
                  metrics=metrics, steps_per_execution=steps)
    labels = tuple([encoded] * len(outputs))

    def rows(selected: np.ndarray) -> tuple[Any, Any]:
        return tuple(m[selected] for m in matrices), tuple(label[selected] for label in labels)

    if held_rows is not None:
        held = [matrix[held_rows] for matrix in matrices]     # one copy per input, shared by its branches
        for index, (_, X, *_) in enumerate(members):
            branches[index].held_out = held[slots[id(X)]]
    stopping = _BranchStopping(branches, None if held_rows is None else encoded[held_rows])
    keras.utils.set_random_seed(first.random_state)     # the shuffle a lone head's pipeline draws
    model.fit(_repeated(rows(fit_rows), batch_size=first.batch_size, seed=first.random_state),
              epochs=max(b.head.epochs for b in branches), steps_per_epoch=steps, callbacks=[stopping], verbose=0,
              shuffle=False)
    for branch in branches:
        weights = branch.weights if branch.weights is not None else branch.current_weights()
        head = branch.head
        head.coefs_, head.intercepts_ = _coefs_intercepts(weights)
        head.loss_curve_ = branch.loss_curve
        head.n_epochs_ = len(branch.loss_curve)


def _lone_start(head: DenseHead, n_features: int, n_classes: int) -> tuple[list[np.ndarray], Any]:
    """The initial kernels and biases (``coefs_ + intercepts_`` order) and the Dropout layer (or None) of a lone head.

    Made as :meth:`DenseHead.fit` makes them, right after seeding Keras with
    the head's seed, so they hold the lone head's initial weights and dropout seed.
    """
    keras.utils.set_random_seed(head.random_state)
    layers = network_layers(n_classes, hidden_units=head.hidden_units, dropout=head.dropout)
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    width = n_features
    for layer in dense:
        layer.build((None, width))
        width = layer.units
    dropout = next((layer for layer in layers if isinstance(layer, keras.layers.Dropout)), None)
    weights = [keras.ops.convert_to_numpy(w) for w in [layer.kernel for layer in dense] + [layer.bias for layer in dense]]
    return [np.array(w, np.float32) for w in weights], dropout
