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
``bf16`` on CPUs that have it) and the ``THROUGHPUT`` performance hint:
OpenVINO splits the cores into streams (2 streams of 1 thread on a 2-core
machine) and the step's ``stream`` keeps one batch in flight per stream
(``AsyncInferQueue``). Under the ``LATENCY`` hint one batch at a time runs on
every core, and each inference waits for its slowest thread: while the
decoding threads take a core from it, the other idles at the barrier. With
streams each batch runs on its own thread and the decoding threads only slow
the stream they share a core with. On the project's 2-core machine a decode
and infer loop over 400 photos ran 1.18× faster (173.6 against 147.5 img/s,
medians of 3 in one process), the whole stage 1.05–1.11×, compute alone about
as fast (BENCHMARKS.md). A lone call (``step(batch)``) runs on one stream.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# OpenVINO's performance hint (see the module docstring).
PERFORMANCE_HINT = "THROUGHPUT"


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
    with tempfile.TemporaryDirectory(prefix="shoulders-openvino-") as tmp, without_telemetry():
        path = Path(tmp) / "model.xml"
        wrapper.export(
            str(path), format="openvino", verbose=False, input_signature=[keras.InputSpec(shape=shape, dtype="float32")]
        )
        return ov.Core().read_model(str(path))


# The modules of OpenVINO's converter that reach its telemetry through a module-level name ``tm``.
_TELEMETRY_USERS = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.utils")


@contextlib.contextmanager
def without_telemetry() -> Iterator[None]:
    """Convert without OpenVINO's usage telemetry: its own no-op stub stands in for ``openvino_telemetry``.

    OpenVINO's converter reports each conversion to Google Analytics unless the
    user opted out (no consent file counts as consent), from a process it forks
    — in a process where JAX's or TensorFlow's threads run, a fork can deadlock.
    shoulders sends nothing anywhere. The stub is the one OpenVINO itself uses when
    ``openvino_telemetry`` is not installed; the modules are restored on exit.
    """
    from openvino.tools.ovc import telemetry_stub

    swapped = []
    for name in _TELEMETRY_USERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "tm"):
            swapped.append((module, module.tm))
            module.tm = telemetry_stub
    try:
        yield
    finally:
        for module, original in swapped:
            module.tm = original


def compile_step(model: Any, preprocess: Callable, *, batch_size: int, runtime: Any) -> NetworkStep:
    """The compiled step of ``model``; the converted ``openvino.Model`` is kept as its ``network`` attribute
    (what :mod:`pipeline.extraction.network_cache` stores)."""
    converted = to_openvino(model, preprocess, batch_size)
    step = compile_network(converted, runtime=runtime, outputs=len(model.outputs))
    step.network = converted
    return step


def compile_network(network: Any, *, runtime: Any, outputs: int) -> NetworkStep:
    """Compile an ``openvino.Model`` (or the path of its IR ``.xml``) for the CPU at ``runtime``'s precision.

    ``outputs`` is how many of the graph's outputs are the model's own, in order
    (a graph converted through TensorFlow may carry more: shape tensors).
    """
    import openvino as ov

    core = ov.Core()
    if not isinstance(network, ov.Model):
        network = core.read_model(str(network))
    compiled = core.compile_model(
        network, "CPU", {"INFERENCE_PRECISION_HINT": HINTS[runtime.precision], "PERFORMANCE_HINT": PERFORMANCE_HINT}
    )
    return NetworkStep(compiled, outputs)


class NetworkStep:
    """A compiled OpenVINO network as a step: ``step(batch)`` for one batch, ``step.stream(batches)`` for many."""

    def __init__(self, compiled: Any, outputs: int):
        self.compiled = compiled
        self.outputs = outputs
        self.streams = int(compiled.get_property("NUM_STREAMS"))
        self.requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._request = compiled.create_infer_request()
        self._queue = None

    def _features(self, request: Any):
        # The output tensors' memory is reused by the request's next inference: copy them out.
        got = [np.array(request.get_output_tensor(i).data, dtype=np.float32) for i in range(self.outputs)]
        return got[0] if self.outputs == 1 else got

    def __call__(self, batch: np.ndarray):
        """The features of ``batch``; a list of arrays for a model of several outputs."""
        self._request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return self._features(self._request)

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator:
        """The features of each batch, in order, with one batch in flight per infer request.

        Inputs are copied into the requests when started, so a batch array may
        be reused by its producer as soon as the next one is asked for.
        """
        import openvino as ov

        if self._queue is None:
            # Made once and kept as long as the step: a queue released while its last callback is still
            # unwinding on OpenVINO's thread is destroyed on that thread, which then joins itself (abort).
            self._queue = ov.AsyncInferQueue(self.compiled, self.requests)
        queue = self._queue
        done: dict[int, Any] = {}
        failed: list[BaseException] = []

        def finished(request, index):
            try:
                done[index] = self._features(request)
            except BaseException as error:  # noqa: BLE001 - raised again on the consuming thread
                failed.append(error)

        queue.set_callback(finished)
        given = taken = 0
        try:
            for batch in batches:
                queue.start_async({0: np.ascontiguousarray(batch, np.float32)}, given)  # waits for a free request
                given += 1
                while taken in done:
                    yield done.pop(taken)
                    taken += 1
                if failed:
                    raise failed[0]
        finally:
            queue.wait_all()  # nothing left running on the requests, also when the consumer stops early
        if failed:
            raise failed[0]
        for index in range(taken, given):
            yield done.pop(index)
