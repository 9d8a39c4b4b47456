"""The TensorFlow runtime: a ``tf.function`` with a fixed input signature, XLA when ``jit_compile``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def compile_step(model: Any, preprocess: Callable, *, batch_size: int, runtime: Any) -> Callable:
    import tensorflow as tf

    # A fixed signature: traced once however many batches run.
    spec = tf.TensorSpec((batch_size, *model.input_shape[1:]), tf.float32)

    @tf.function(input_signature=[spec], jit_compile=runtime.jit_compile)
    def step(batch):
        return tf.cast(model(preprocess(batch), training=False), tf.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        return step(batch).numpy()

    run.traced = step  # for tests: how often it was traced
    return run
