"""The OpenVINO runtime: the Keras model converted to an OpenVINO model and compiled for the CPU.

Under Keras' TensorFlow backend (what the extract stage selects for this
runtime when TensorFlow is installed) Keras' export converts through
OpenVINO's TensorFlow frontend, which keeps the convolutions in OpenVINO's
layout (Lite0: 2 transposes, 2.3× TensorFlow's own speed here); under Keras'
OpenVINO backend (no TensorFlow installed) it builds the graph from the Keras
layers directly, with a layout transpose around each layer (245 in Lite0,
0.8× TensorFlow). The graph is
made for the batch size and compiled with an explicit precision hint
(``f32`` unless ``extract.precision`` says otherwise: OpenVINO's own default is
``bf16`` on CPUs that have it) and the ``LATENCY`` performance hint, which ran
faster than ``THROUGHPUT`` for one stream of batches (BENCHMARKS.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def to_openvino(model: Any, preprocess: Callable, batch_size: int):
    """``openvino.Model`` of ``preprocess`` followed by ``model``, for batches of ``batch_size`` raw 0–255 images.

    The batch size is fixed in the graph, through the input signature: Keras'
    OpenVINO conversion bakes the example batch into some reshapes
    (squeeze-and-excite blocks: a ``Reshape`` layer takes its batch dimension
    from the example input, whose unknown batch Keras sets to 1), so a graph made
    for one batch size cannot be reshaped to another.
    """
    import keras
    import openvino as ov

    shape = (batch_size, *model.input_shape[1:])
    inputs = keras.Input(shape=model.input_shape[1:], name="image", dtype="float32")
    wrapper = keras.Model(inputs, model(preprocess(inputs)), name=f"{model.name}_with_preprocessing")
    with tempfile.TemporaryDirectory(prefix="shoulders-openvino-") as tmp:
        path = Path(tmp) / "model.xml"
        wrapper.export(str(path), format="openvino", verbose=False,
                       input_signature=[keras.InputSpec(shape=shape, dtype="float32")])
        return ov.Core().read_model(str(path))


def compile_step(model: Any, preprocess: Callable, *, batch_size: int, runtime: Any) -> Callable:
    """The compiled step of ``model``; the converted ``openvino.Model`` is kept as its ``network`` attribute
    (what :mod:`pipeline.extraction.network_cache` stores)."""
    converted = to_openvino(model, preprocess, batch_size)
    run = compile_network(converted, runtime=runtime, outputs=len(model.outputs))
    run.network = converted
    return run


def compile_network(network: Any, *, runtime: Any, outputs: int) -> Callable:
    """Compile an ``openvino.Model`` (or the path of its IR ``.xml``) for the CPU at ``runtime``'s precision.

    ``outputs`` is how many of the graph's outputs are the model's own, in order
    (a graph converted through TensorFlow may carry more: shape tensors).
    """
    import openvino as ov

    core = ov.Core()
    if not isinstance(network, ov.Model):
        network = core.read_model(str(network))
    compiled = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": HINTS[runtime.precision],
                                                   "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(batch: np.ndarray):
        """The features of ``batch``; a list of arrays for a model of several outputs."""
        request.infer({0: np.ascontiguousarray(batch, np.float32)})
        # The output tensors' memory is reused by the next inference: copy them out.
        got = [np.array(request.get_output_tensor(i).data, dtype=np.float32) for i in range(outputs)]
        return got[0] if outputs == 1 else got

    return run
