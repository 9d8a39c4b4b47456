"""Dense heads trained by JAX: one compiled program trains every member at once, on the CPU or a GPU.

A sweep's dense variants, and under cross-validation each of them once per
fold, are small networks ``[Dense(relu)] → [Dropout] → Dense(softmax)`` on
rows that are already in memory. Trained one Keras model at a time they cost
more in tracing and per-step overhead than in arithmetic. Here every member —
a head on its own input matrix and its own rows (a fold's training rows, say)
— is one slice of a ``jax.vmap``: a whole training run (epochs of shuffled
mini-batches, Adam, dropout, weight decay, early stopping on held-out rows)
is one ``jax.lax.while_loop`` compiled once per shape and run for all members
together on a GPU, as DINOv2's evaluation trains its linear heads. A member
that has stopped is carried along with its weights frozen (``vmap`` of a while
loop runs until the last member is done), so on a CPU, where a head-epoch
costs the same alone or batched, the members run one at a time through the
same program (:func:`_one_member_per_program`).

Each member is trained exactly as :class:`~pipeline.heads.dense.DenseHead`
trains one head alone — ``DenseHead.fit`` is this function with one member —
so batched and lone results agree to float32 rounding (the batched matmuls sum
in another order; ``tests/test_dense_batch.py`` holds them to 1e-5):

* the rows held out for early stopping: a stratified, seeded split
  (:meth:`~pipeline.heads.dense.DenseHead.held_out_rows`);
* the order of the rows: a permutation of the training rows per epoch from
  ``numpy.random.default_rng(random_state)``, in batches of ``batch_size``
  (the last one smaller), made in numpy before the program runs;
* the initial weights: Glorot-uniform kernels (Keras' default) and zero
  biases drawn from the same generator; the dropout masks from
  ``jax.random.key(random_state)`` folded with the step number;
* Adam with Keras' defaults (β₁ 0.9, β₂ 0.999, ε 1e-7), the mean
  cross-entropy of the batch plus ``weight_decay · Σ w²`` over the kernels;
* early stopping as Keras' ``EarlyStopping(patience, restore_best_weights=True)``
  on the held-out cross-entropy (:func:`~pipeline.heads.dense.held_out_loss`'s
  clipping), the best weights kept.

Members are grouped by what fixes the program's shapes (hidden width, batch
size, the input width); everything else — learning rate, dropout, weight
decay, epochs, patience, seed, rows — may differ between members of a group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Keras' Adam defaults and its clipping of probabilities (keras.config.epsilon()).
_BETA_1, _BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-7
_CLIP = 1e-7


@dataclass(frozen=True)
class Member:
    """One head to train: its estimator (settings), its input matrix and its rows.

    ``matrix`` indexes the ``inputs`` given to :func:`train_members`;
    ``fit_rows`` are the rows of that matrix it trains on, in order (its
    epochs shuffle them); ``held_rows`` the rows its early stopping scores
    (None: no early stopping); ``labels`` the class code of every row of the
    matrix. ``views`` > 1: the matrix holds ``views`` copies of the rows, view
    ``v`` of row ``i`` at ``v · n + i``, and each epoch trains on one view of
    every row, drawn afresh (held-out rows are read on view 0, the clean one).
    """

    head: Any  # a DenseHead (its settings; fitted in place)
    matrix: int
    fit_rows: np.ndarray
    held_rows: np.ndarray | None
    labels: np.ndarray
    n_classes: int
    views: int = 1


def prepared_member(head, matrix: int, encoded: np.ndarray, views: int = 1) -> Member:
    """A :class:`Member` training ``head`` on every row of matrix ``matrix`` but those it holds out.

    ``encoded`` holds the class codes of the rows (``head.classes_`` set by
    :meth:`DenseHead._validate_training`).
    """
    fit_rows, held_rows = head.held_out_rows(encoded)
    labels = np.tile(encoded, views) if views > 1 else encoded
    return Member(head, matrix, fit_rows, held_rows, labels, len(head.classes_), views)


def train_members(members: Sequence[Member], matrices: Sequence[np.ndarray]) -> None:
    """Train every member on its matrix (see the module docstring); the heads are fitted in place.

    Members of one hidden width and batch size run as one program (on a CPU,
    each member one after another: :func:`_one_member_per_program`). Its shapes
    are rounded up (:func:`_padded_shapes`), so that the programs of a sweep's
    folds, feature sets and inputs are few and compiled once each: compiling one
    costs ~1-2 s on 2 cores, more than training a fold of four heads.
    """
    groups: dict[tuple, list[Member]] = {}
    alone = _one_member_per_program()
    for index, member in enumerate(members):
        head = member.head
        groups.setdefault((head.hidden_units, head.batch_size, member.n_classes, index if alone else 0), []).append(
            member
        )
    for group in groups.values():
        _train_group(group, matrices)
    log.debug("%d dense heads trained as %d batched programs", len(members), len(groups))


def _one_member_per_program() -> bool:
    """Whether members run one program each, one after another: on a CPU.

    ``vmap`` of a while loop computes every member until the last one stops:
    a member that early stopping ended is still computed, its steps discarded.
    On a GPU members in parallel are nearly free, so they run together; on a
    CPU a head-epoch costs the same alone or batched, and running them one at
    a time computes only the epochs each one needs (four heads stopping at 30,
    60, 31 and 36 epochs: 2.0 s one at a time against 3.0 s together, on 2
    cores; BENCHMARKS.md).
    """
    import jax

    return jax.default_backend() == "cpu"


def _row_orders(member: Member, epochs: int, steps: int) -> np.ndarray:
    """Each epoch's rows in batches, shape (epochs, steps, batch_size), ``-1`` where a batch has fewer rows.

    A permutation of the member's training rows per epoch from its seed (and,
    with views, the view of each row drawn afresh).
    """
    head = member.head
    rng = np.random.default_rng(head.random_state)
    size = steps * head.batch_size
    orders = np.full((epochs, size), -1, np.int32)
    n = len(member.fit_rows)
    n_rows = len(member.labels) // member.views
    for epoch in range(min(epochs, head.epochs)):
        rows = member.fit_rows[rng.permutation(n)]
        if member.views > 1:
            rows = rows + n_rows * rng.integers(0, member.views, size=n)
        orders[epoch, :n] = rows
    return orders.reshape(epochs, steps, head.batch_size)


def _round_up(value: int, step: int) -> int:
    return max(step, -(-value // step) * step)


def _padded_shapes(members: Sequence[Member], matrices: Sequence[np.ndarray]) -> tuple[int, int, int, int]:
    """The program's member count, input width, rows and held-out rows: rounded up, the padding inert.

    Members: the next power of two (copies of the last, discarded). Width:
    the widest input (narrower ones get zero columns, and their first kernel
    zero rows, which neither change a sum nor get a gradient). Rows and
    held-out rows: multiples of 32 and 8 (folds differ by a row or two).
    """
    width = max(matrices[m.matrix].shape[1] for m in members)
    rows = _round_up(max(len(matrices[m.matrix]) for m in members), 32)
    held = _round_up(max((0 if m.held_rows is None else len(m.held_rows)) for m in members), 8)
    return 1 << (len(members) - 1).bit_length(), width, rows, held


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def _initial_weights(head, n_features: int, n_classes: int) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels and zero biases, drawn from the head's seed (the same alone or batched)."""
    rng = np.random.default_rng([head.random_state, 1])
    width = head.hidden_units or n_features
    weights = {"w2": _glorot(rng, width, n_classes), "b2": np.zeros(n_classes, np.float32)}
    if head.hidden_units:
        weights = {
            "w1": _glorot(rng, n_features, head.hidden_units),
            "b1": np.zeros(head.hidden_units, np.float32),
            **weights,
        }
    return weights


def _train_group(members: Sequence[Member], matrices: Sequence[np.ndarray]) -> None:
    """Train members that share a program shape; set each head's ``coefs_``, ``intercepts_``, ``n_epochs_``, ``loss_curve_``."""
    import jax
    import jax.numpy as jnp

    first = members[0].head
    batch_size, hidden = first.batch_size, first.hidden_units
    n_classes = members[0].n_classes
    n_real = len(members)
    n_members, width, n_rows, n_held = _padded_shapes(members, matrices)
    members = list(members) + [members[-1]] * (n_members - n_real)
    epochs = max(m.head.epochs for m in members)
    steps = max(math.ceil(len(m.fit_rows) / batch_size) for m in members)
    used = sorted({m.matrix for m in members})
    place = {index: position for position, index in enumerate(used)}
    X = np.zeros((len(used), n_rows, width), np.float32)
    Y = np.zeros((len(used), n_rows), np.int32)
    for index in used:
        X[place[index], : len(matrices[index]), : matrices[index].shape[1]] = matrices[index]
    for member in members:
        Y[place[member.matrix], : len(member.labels)] = member.labels
    held = np.full((len(members), n_held), -1, np.int32)
    for i, member in enumerate(members):
        if member.held_rows is not None:
            held[i, : len(member.held_rows)] = member.held_rows
    orders = np.stack([_row_orders(m, epochs, steps) for m in members])
    first_kernel = "w1" if hidden else "w2"
    initial = []
    for member in members:
        weights = _initial_weights(member.head, matrices[member.matrix].shape[1], n_classes)
        kernel = weights[first_kernel]
        weights[first_kernel] = np.pad(kernel, ((0, width - kernel.shape[0]), (0, 0)))
        initial.append(weights)
    params = {name: np.stack([w[name] for w in initial]) for name in initial[0]}
    settings = {
        "matrix": np.array([place[m.matrix] for m in members], np.int32),
        "learning_rate": np.array([m.head.learning_rate for m in members], np.float32),
        "dropout": np.array([m.head.dropout for m in members], np.float32),
        "weight_decay": np.array([m.head.weight_decay for m in members], np.float32),
        "epochs": np.array([m.head.epochs for m in members], np.int32),
        "patience": np.array([m.head.patience if m.held_rows is not None else 0 for m in members], np.int32),
        "key": np.stack([np.asarray(jax.random.key_data(jax.random.key(m.head.random_state))) for m in members]),
    }
    program = _program(hidden > 0)
    result = program(jnp.asarray(X), jnp.asarray(Y), jnp.asarray(orders), jnp.asarray(held), params, settings)
    result = jax.tree.map(np.asarray, result)
    for i, member in enumerate(members[:n_real]):
        head = member.head
        names = ["w1", "w2"] if hidden else ["w2"]
        head.coefs_ = [np.array(result["weights"][n][i], np.float32) for n in names]
        head.coefs_[0] = head.coefs_[0][: matrices[member.matrix].shape[1]]  # the input's own width
        head.intercepts_ = [np.array(result["weights"][n.replace("w", "b")][i], np.float32) for n in names]
        head.n_epochs_ = int(result["epochs_run"][i])
        head.loss_curve_ = [float(v) for v in result["loss_curve"][i][: head.n_epochs_]]


_PROGRAMS: dict[bool, object] = {}


def _program(hidden: bool):
    """The compiled training program (one per network shape kind; jit caches one per array shapes)."""
    if hidden not in _PROGRAMS:
        _use_compilation_cache()
        _PROGRAMS[hidden] = _build_program(hidden)
    return _PROGRAMS[hidden]


def _use_compilation_cache() -> None:
    """Keep compiled programs on disk, so that the next run of the stage loads them instead of compiling.

    A program takes ~1.2 s to compile on 2 cores and is the same from run to
    run for the same shapes (a sweep of ``dvc exp run``s); XLA's own cache,
    keyed by the program and the device, under the shoulders cache folder
    (``$SHOULDERS_CACHE_DIR``, else ``$XDG_CACHE_HOME/shoulders``, else
    ``~/.cache/shoulders``) unless ``JAX_COMPILATION_CACHE_DIR`` names another.
    """
    import jax

    from pipeline.cache_dir import cache_dir

    if jax.config.jax_compilation_cache_dir:  # set by the user (JAX_COMPILATION_CACHE_DIR) or already here
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _build_program(hidden: bool):
    import jax
    import jax.numpy as jnp

    def forward(params, x, key, rate, training):
        """Probabilities' logits of rows ``x``; dropout (inverted, as Keras) when ``training``."""
        h = jax.nn.relu(x @ params["w1"] + params["b1"]) if hidden else x
        if training:
            keep = jax.random.bernoulli(key, 1.0 - rate, h.shape)
            h = jnp.where(keep, h / (1.0 - rate), 0.0)
        return h @ params["w2"] + params["b2"]

    def penalty(params, decay):
        return decay * sum(jnp.sum(jnp.square(params[name])) for name in (("w1", "w2") if hidden else ("w2",)))

    def train_one(X, Y, orders, held, params, s):
        x_all, y_all = X[s["matrix"]], Y[s["matrix"]]
        key = jax.random.wrap_key_data(s["key"])
        held_valid = held >= 0
        x_held, y_held = x_all[jnp.maximum(held, 0)], y_all[jnp.maximum(held, 0)]
        n_epochs_max = orders.shape[0]

        def batch_loss(p, rows, step_key):
            valid = rows >= 0
            safe = jnp.maximum(rows, 0)
            logits = forward(p, x_all[safe], step_key, s["dropout"], True)
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y_all[safe][:, None], axis=1)[:, 0]
            count = jnp.maximum(jnp.sum(valid), 1)
            cross_entropy = jnp.sum(jnp.where(valid, nll, 0.0)) / count
            return cross_entropy + penalty(p, s["weight_decay"]), (cross_entropy, jnp.sum(valid))

        def step(carry, rows):
            p, m, v, t, total, count = carry
            step_key = jax.random.fold_in(key, t)
            (_, (cross_entropy, n_valid)), grads = jax.value_and_grad(batch_loss, has_aux=True)(p, rows, step_key)
            active = n_valid > 0
            t_next = t + active.astype(t.dtype)
            tf = t_next.astype(jnp.float32)
            lr = s["learning_rate"] * jnp.sqrt(1.0 - _BETA_2**tf) / (1.0 - _BETA_1**tf)
            m_new = jax.tree.map(lambda a, g: _BETA_1 * a + (1.0 - _BETA_1) * g, m, grads)
            v_new = jax.tree.map(lambda a, g: _BETA_2 * a + (1.0 - _BETA_2) * g * g, v, grads)
            p_new = jax.tree.map(lambda w, a, b: w - lr * a / (jnp.sqrt(b) + _ADAM_EPSILON), p, m_new, v_new)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
            return (
                keep(p_new, p),
                keep(m_new, m),
                keep(v_new, v),
                t_next,
                total + cross_entropy * n_valid,
                count + n_valid,
            ), None

        def held_out(p):
            logits = forward(p, x_held, key, 0.0, False)
            probabilities = jax.nn.softmax(logits)
            picked = jnp.take_along_axis(probabilities, y_held[:, None], axis=1)[:, 0]
            nll = -jnp.log(jnp.clip(picked, _CLIP, 1.0 - _CLIP))
            return jnp.sum(jnp.where(held_valid, nll, 0.0)) / jnp.maximum(jnp.sum(held_valid), 1)

        def epoch(state):
            p, m, v, t, e, best_loss, best_p, wait, done, curve = state
            (p, m, v, t, total, count), _ = jax.lax.scan(step, (p, m, v, t, 0.0, 0), orders[e])
            curve = curve.at[e].set(total / jnp.maximum(count, 1))
            early = s["patience"] > 0
            loss = held_out(p)
            better = loss < best_loss
            best_loss = jnp.where(better, loss, best_loss)
            best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
            wait = jnp.where(better, 0, wait + 1)
            done = (early & (wait >= s["patience"]) & (e > 0)) | (e + 1 >= s["epochs"])
            return p, m, v, t, e + 1, best_loss, best_p, wait, done, curve

        zeros = jax.tree.map(jnp.zeros_like, params)
        state = (
            params,
            zeros,
            zeros,
            jnp.int32(0),
            jnp.int32(0),
            jnp.float32(jnp.inf),
            params,
            jnp.int32(0),
            jnp.bool_(False),
            jnp.full((n_epochs_max,), jnp.nan, jnp.float32),
        )
        p, _, _, _, e, _, best_p, _, _, curve = jax.lax.while_loop(lambda st: ~st[8], epoch, state)
        weights = jax.tree.map(lambda a, b: jnp.where(s["patience"] > 0, a, b), best_p, p)
        return {"weights": weights, "epochs_run": e, "loss_curve": curve}

    return jax.jit(jax.vmap(train_one, in_axes=(None, None, 0, 0, 0, 0)))
