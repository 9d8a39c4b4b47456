"""The JAX runtime: the Keras model's stateless call, compiled by XLA (``jax.jit``), on JAX's default device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def compile_step(model: Any, preprocess: Callable, *, batch_size: int, runtime: Any) -> Callable:
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def step(trainable, non_trainable, batch):
        outputs, _ = model.stateless_call(trainable, non_trainable, preprocess(batch), training=False)
        return outputs.astype(jnp.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(step(trainable, non_trainable, jnp.asarray(batch, jnp.float32)))

    return run
