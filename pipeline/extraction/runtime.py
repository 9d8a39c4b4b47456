"""How inference runs on this machine: the device, batch size, XLA and mixed precision.

``extract.batch_size``, ``extract.jit_compile`` and ``extract.mixed_precision``
default to ``auto``, resolved here for the devices TensorFlow sees: on a CPU
batch 8, no XLA (it slows depthwise convolutions there) and float32 compute
(float16 is emulated); on a GPU batch 128, XLA and mixed float16. Every stage
that runs a backbone (extract, augment, backbone_cost) resolves them here, so
they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ExtractParams

# Measured on the 2-core CPUs here (benchmarks/extract.py, BENCHMARKS.md): small batches keep a
# depthwise network's activations in cache (EfficientNet-Lite0: 55 img/s at 8 against 42 at 32),
# and heavy networks (VGG16) run the same at any size; a GPU wants large batches.
BATCH_CPU, BATCH_GPU = 8, 128


@dataclass(frozen=True)
class Runtime:
    """How inference runs on this machine, resolved from ``extract`` params."""

    device: str            # "GPU" or "CPU"
    batch_size: int
    jit_compile: bool
    mixed_precision: bool


def resolve_runtime(settings: ExtractParams) -> Runtime:
    """Resolve the ``auto`` settings for the devices TensorFlow sees."""
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))

    def pick(value, on_gpu):
        return on_gpu if value == "auto" else value

    return Runtime(device="GPU" if gpu else "CPU",
                   batch_size=pick(settings.batch_size, BATCH_GPU if gpu else BATCH_CPU),
                   jit_compile=pick(settings.jit_compile, gpu),
                   mixed_precision=pick(settings.mixed_precision, gpu))
