"""How inference runs on this machine: the runtime, its device, the compute precision and the batch size.

``extract.runtime`` chooses what runs the backbone (:mod:`pipeline.extraction.runtimes`):

- ``openvino`` — OpenVINO on the CPU; ``auto`` on a machine without a GPU.
  The model is built under Keras' TensorFlow backend and converted by
  OpenVINO's TensorFlow frontend, whose graph keeps the convolutions in
  OpenVINO's own layout: Lite0 at batch 8 ran 307 img/s that way against 105
  through Keras' own OpenVINO backend, whose per-layer layout transposes (245
  in Lite0) leave it slower than TensorFlow (133; quiet machine, same
  weights, BENCHMARKS.md). Where TensorFlow is not installed, the model is
  built under Keras' OpenVINO backend instead (no TensorFlow anywhere);
- ``jax`` — Keras on JAX, compiled by XLA; ``auto`` when JAX sees a GPU
  (``pip install -e ".[gpu]"``); on a CPU JAX is slow for depthwise networks;
- ``tensorflow`` — a compiled ``tf.function``; what the exported model and
  fine-tuning use.

``extract.precision`` is the compute precision: ``auto`` is float32 on a CPU
(OpenVINO's precision hint is set to f32 explicitly: its own default is bf16 on
CPUs that have it) and mixed float16 on a GPU; ``bfloat16`` is opt-in on CPUs
(about 1% relative difference). ``extract.batch_size: auto`` is measured on
this machine for each runtime × backbone the first time (:mod:`pipeline.extraction.batch_size`),
128 on a GPU. Each stage that runs a backbone resolves these here, so they agree.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass

from pipeline.config import ExtractParams

log = logging.getLogger(__name__)

BATCH_GPU = 128
RUNTIMES = ("tensorflow", "openvino", "jax")
# The Keras backend each runtime builds its model under (OpenVINO: see keras_backend()).
KERAS_BACKEND = {"tensorflow": "tensorflow", "openvino": "tensorflow", "jax": "jax"}
# extract.precision → how the store records the compute.
COMPUTE = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class Runtime:
    """How inference runs on this machine, resolved from ``extract`` params."""

    name: str  # tensorflow | openvino | jax
    device: str  # "GPU" or "CPU"
    precision: str  # float32 | float16 | bfloat16
    batch_size: int | None  # None: to be measured (extract.batch_size: auto on a CPU)
    jit_compile: bool  # XLA for the TensorFlow runtime (JAX always compiles with it)

    @property
    def compute(self) -> str:
        return COMPUTE[self.precision]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (a finder that refuses it counts as not installed)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def keras_backend(runtime_name: str) -> str:
    """The Keras backend runtime ``runtime_name`` builds its model under.

    OpenVINO converts from TensorFlow's graph when TensorFlow is installed (the
    faster graph, see the module docstring), else from Keras' OpenVINO backend.
    """
    if runtime_name == "openvino" and not installed("tensorflow"):
        return "openvino"
    return KERAS_BACKEND[runtime_name]


def jax_gpu() -> bool:
    """Whether JAX is installed and sees a GPU.

    JAX is imported only when one of its GPU plugins is installed (the ``[gpu]``
    extra's ``jax-cuda*-plugin``; ROCm's), so a CPU machine never pays for it.
    """
    if not installed("jax"):
        return False
    plugins = {dist.metadata["Name"].lower().replace("_", "-") for dist in importlib.metadata.distributions()}
    if not any(name.startswith(("jax-cuda", "jax-rocm")) for name in plugins):
        return False
    import jax

    return any(device.platform == "gpu" for device in jax.devices())


def runtime_name(name: str, option: str = "extract.runtime") -> str:
    """``auto`` resolved for this machine (JAX on a visible GPU, else OpenVINO, else TensorFlow), its package checked.

    Raises
    ------
    ValueError
        If the runtime is unknown or its package is not installed (naming what to install).
    """
    if name == "auto":
        name = "jax" if jax_gpu() else "openvino" if installed("openvino") else "tensorflow"
    if name not in RUNTIMES:
        raise ValueError(f"{option} must be one of auto, {', '.join(RUNTIMES)}. Received: {name!r}")
    if not installed(name):
        hint = 'pip install -e ".[gpu]"' if name == "jax" else f"pip install {name}"
        raise ValueError(
            f"{option}: {name} needs the {name!r} package, which is not installed "
            f"({hint}). Valid runtimes: auto, {', '.join(RUNTIMES)}"
        )
    return name


def keras_backend_for(name: str, option: str = "--runtime") -> str:
    """Make Keras run a whole model (``shoulders predict``) on runtime ``name``; returns the runtime.

    TensorFlow and JAX run it through Keras on their backend; OpenVINO runs it
    converted from the backend of :func:`keras_backend`. Keras' backend is fixed
    when Keras is first imported: a process where it is already chosen (Keras
    imported, or ``KERAS_BACKEND`` set) keeps it when ``name`` is ``auto`` (the
    runtime of that backend's name) and is refused, naming what to do, when
    ``name`` needs another.
    """
    current = _chosen_keras_backend()
    if current is not None and (name == "auto" or current == name):
        return current
    name = runtime_name(name, option)
    if current is None:
        os.environ["KERAS_BACKEND"] = keras_backend(name)
        return name
    if runs_on(name, current):
        return name
    raise ValueError(
        f"{option} {name} needs Keras' {keras_backend(name)} backend, but this process already uses "
        f"{current} (KERAS_BACKEND or an earlier import): unset KERAS_BACKEND or set it to "
        f"{keras_backend(name)}"
    )


def runs_on(runtime_name: str, backend: str) -> bool:
    """Whether runtime ``runtime_name`` can run in a process whose Keras backend is ``backend``.

    OpenVINO converts from whichever of its two Keras backends the process has.
    """
    if runtime_name == "openvino":
        return backend in ("tensorflow", "openvino")
    return backend == KERAS_BACKEND[runtime_name]


def _chosen_keras_backend() -> str | None:
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND")


def resolve_runtime(settings: ExtractParams) -> Runtime:
    """Resolve the ``auto`` settings for this machine.

    Raises
    ------
    ValueError
        If the runtime asked for is not installed (naming what to install).
    """
    name = runtime_name(settings.runtime)
    if name == "tensorflow":
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    else:
        gpu = name == "jax" and jax_gpu()
    precision = settings.precision if settings.precision != "auto" else ("float16" if gpu else "float32")
    if precision == "float16" and not gpu and name == "openvino":
        raise ValueError(
            "extract.precision: float16 needs a GPU; on a CPU use float32 or bfloat16. "
            f"Received: precision=float16 with runtime={name}"
        )
    batch = settings.batch_size if settings.batch_size != "auto" else (BATCH_GPU if gpu else None)
    jit = settings.jit_compile if settings.jit_compile != "auto" else gpu
    return Runtime(
        name=name, device="GPU" if gpu else "CPU", precision=precision, batch_size=batch, jit_compile=bool(jit)
    )


def use_keras_backend(runtime: Runtime) -> str:
    """Make Keras build under the runtime's backend; returns the backend Keras will use.

    Keras' backend is fixed per process when Keras is first imported. When it
    is already chosen — Keras imported, or ``KERAS_BACKEND`` set (a test session,
    a user's shell) — an OpenVINO runtime converts from either a TensorFlow or an
    OpenVINO backend and any other mismatch is refused, naming what to do.
    """
    wanted = keras_backend(runtime.name)
    current = _chosen_keras_backend()
    if current is None:
        os.environ["KERAS_BACKEND"] = wanted
        return wanted
    if not runs_on(runtime.name, current):
        raise ValueError(
            f"extract.runtime: {runtime.name} needs Keras' {wanted} backend, but this process uses "
            f"{current} (KERAS_BACKEND or an earlier import): run the stage as its own process "
            f"without KERAS_BACKEND set (as `dvc repro` does), or set KERAS_BACKEND={wanted}"
        )
    return current
