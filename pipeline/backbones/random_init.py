"""Random weights that are the same on every Keras backend: ``weights: none``, drawn with numpy.

Keras draws an initializer's values with its backend's random generator, so
TensorFlow, JAX and OpenVINO give three different "random" networks for one
seed — and a store keyed by ``(weights: none, seed)`` would mix features of
different networks. :func:`initial_value` draws what each random initializer
defines (its distribution, its scale from the variable's fans) with numpy
instead, from a generator seeded per variable, so ``weights: none`` is one
network whichever runtime runs it, in whichever process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Recorded in the identity of random-weight features: another scheme gives another network.
SCHEME = "numpy v1 (pipeline.backbones.random_init)"
# Keras' truncated normal keeps values within two standard deviations.
_TRUNCATE = 2.0


def fans(shape: Sequence[int], input_axes=None, output_axes=None) -> tuple[float, float]:
    """Input and output units of a weight of ``shape``, as Keras counts them."""
    shape = tuple(shape)
    if input_axes is not None and output_axes is not None:
        return float(math.prod(shape[a] for a in input_axes)), float(math.prod(shape[a] for a in output_axes))
    if len(shape) < 1:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = math.prod(shape[:-2])  # convolution kernels: (*spatial, in, out)
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def _truncated(rng: np.random.Generator, shape, mean: float, stddev: float) -> np.ndarray:
    values = rng.normal(0.0, 1.0, size=shape)
    outside = np.abs(values) > _TRUNCATE
    while outside.any():  # resample what falls outside, as a truncated normal does
        values[outside] = rng.normal(0.0, 1.0, size=int(outside.sum()))
        outside = np.abs(values) > _TRUNCATE
    return mean + stddev * values


def initial_value(initializer: Any, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """The values a Keras random initializer defines for a variable of ``shape``, drawn from ``rng``.

    Raises
    ------
    ValueError
        For an initializer this module does not know (named), rather than
        silently using the backend's own random numbers.
    """
    import keras

    init = keras.initializers
    shape = tuple(int(d) for d in shape)
    if isinstance(initializer, init.VarianceScaling):
        fan_in, fan_out = fans(
            shape, getattr(initializer, "input_axes", None), getattr(initializer, "output_axes", None)
        )
        n = {"fan_in": fan_in, "fan_out": fan_out}.get(initializer.mode, (fan_in + fan_out) / 2.0)
        scale = initializer.scale / max(1.0, n)
        if initializer.distribution == "truncated_normal":
            return _truncated(rng, shape, 0.0, math.sqrt(scale) / 0.87962566103423978)
        if initializer.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(scale), size=shape)
        limit = math.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, size=shape)
    if isinstance(initializer, init.TruncatedNormal):
        return _truncated(rng, shape, initializer.mean, initializer.stddev)
    if isinstance(initializer, init.RandomNormal):
        return rng.normal(initializer.mean, initializer.stddev, size=shape)
    if isinstance(initializer, init.RandomUniform):
        return rng.uniform(initializer.minval, initializer.maxval, size=shape)
    if isinstance(initializer, init.Orthogonal):
        rows, cols = math.prod(shape[:-1]), shape[-1]
        flat = rng.normal(size=(max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(flat)
        q *= np.sign(np.diag(r))
        q = q if rows >= cols else q.T
        return initializer.gain * q.reshape(shape)
    raise ValueError(
        f"weights: none cannot re-draw {type(initializer).__name__} the same on every backend "
        "(known: VarianceScaling and its Glorot/He/Lecun forms, RandomNormal, TruncatedNormal, "
        "RandomUniform, Orthogonal)"
    )


def reinitialize(model: Any, seed: int) -> str:
    """Draw every randomly initialised variable again, from its own initializer's distribution, with numpy.

    Each variable gets a generator seeded by (seed, position of the variable),
    and its values are drawn in numpy (:func:`pipeline.backbones.random_init.initial_value`):
    Keras' own draw would depend on the backend (TensorFlow, JAX and OpenVINO
    give three networks for one seed) and, for initializers without a seed, on
    Python's global ``random``, which other threads of a process (a Dask
    worker's event loop) also consume. So ``weights: none`` is the same network
    on every runtime and in every process.
    """
    import keras

    order = {id(variable): index for index, variable in enumerate(model.weights)}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for attribute, initializer in list(vars(layer).items()):
            if not (
                attribute.endswith("_initializer")
                and isinstance(initializer, keras.initializers.Initializer)
                and "seed" in initializer.get_config()
            ):
                continue
            base = attribute[: -len("_initializer")]
            variable = next(
                (
                    getattr(layer, name)
                    for name in (base, f"{base}_kernel", "kernel")
                    if isinstance(getattr(layer, name, None), keras.Variable)
                ),
                None,
            )
            if variable is None or id(variable) not in order:
                continue
            digest = hashlib.sha256(f"{seed}/{order[id(variable)]}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            variable.assign(initial_value(initializer, variable.shape, rng).astype(variable.dtype))
    return SCHEME
