"""An exported model in memory: decoded images → class probabilities (and out-of-domain distances).

:class:`Predictor` runs ``model.keras`` as :mod:`pipeline.export.predict_command` loads
it. Each image is resized in numpy exactly as in extraction
(:func:`pipeline.extraction.inputs.resize_image`, with the settings of the
graph's own ``resize`` layer) and the rest of the graph runs on the batch: the
same pixels on every runtime. A graph of several backbones at several input
sizes (a combination or an ensemble, :mod:`pipeline.export.graph`) has one
resize layer per size (``resize_0``, ``resize_1``...): each image is resized
for each of them and the graph after them takes one batch per size.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.schema import DEFAULT_MAX_IMAGE_PIXELS
from pipeline.extraction.inputs import resize_image

# A model call takes at most this many pixels (or one image): 32 MP is 96 MB as uint8, ~0.4 GB as float32
# in the graph's resize, while a batch of 32 images of 640×480 (9.8 MP) is not split.
BATCH_PIXELS = 32_000_000
# The names of the graph's resize layers: one (resize), or one per input size (resize_0, resize_1, ...).
RESIZE_NAME = re.compile(r"resize(_\d+)?")


@dataclass
class Predictor:
    """An exported model ready to classify images.

    Attributes
    ----------
    classes : list of str
        Class names, in the order of the probability columns.
    model : keras.Model
        Images → probabilities.
    card : dict
    """

    classes: list[str]
    model: Any
    card: dict
    ood: Any | None = None  # features → out-of-domain distance (ood.keras), when the model has one
    runtime: str | None = None  # "openvino": run through OpenVINO; otherwise Keras' predict on its backend
    _bodies: dict = field(default_factory=dict, repr=False)  # outputs → the graph after the resize layers
    _steps: dict = field(default_factory=dict, repr=False)  # OpenVINO: compiled steps by (outputs, batch size)

    @property
    def ood_threshold(self) -> float | None:
        """Distances beyond this are out of domain (the card's ``out_of_domain.threshold``)."""
        return self.card["out_of_domain"]["threshold"] if self.ood is not None else None

    def predict_scored(
        self, images: Sequence[np.ndarray], *, batch_pixels: int = BATCH_PIXELS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(n, n_classes)`` and out-of-domain distances ``(n,)`` of decoded images.

        Raises
        ------
        ValueError
            If the model has no out-of-domain scorer (exported before it existed: re-export it).
        """
        if self.ood is None:
            raise ValueError("this model has no out-of-domain scorer (ood.keras): re-export it (`dvc repro export`)")
        probabilities, features = self._run("scored", images, batch_pixels)
        return probabilities, np.asarray(self.ood.predict_on_batch(features), np.float32).reshape(-1)

    @property
    def max_pixels(self) -> int:
        """The largest image (width × height) to decode: the training data's limit, from the card."""
        return int(self.card.get("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS)

    @property
    def input_size(self) -> int | None:
        """The (largest) backbone input side: files are decoded for it as in extraction (JPEG draft decoding)."""
        return self.card.get("backbone", {}).get("input_size")

    @property
    def resize(self) -> Any | None:
        """The model's first resize layer as a :class:`~pipeline.backbones.registry.Resize` (None: none)."""
        layers = self._resize_layers()
        return _resize_of(layers[0]) if layers else None

    def _resize_layers(self) -> list:
        return [layer for layer in self.model.layers if RESIZE_NAME.fullmatch(layer.name)]

    def predict_proba(self, images: Sequence[np.ndarray], *, batch_pixels: int = BATCH_PIXELS) -> np.ndarray:
        """Probabilities for decoded images (uint8, (h, w, 3), any sizes), shape (n, n_classes).

        Each image is resized in numpy as in extraction and the graph after its
        resize layers runs on the batch (float32, at most ``batch_pixels``
        pixels per call). A model without a ``resize`` layer gets the images
        themselves, those of one size together.
        """
        return self._run("proba", images, batch_pixels)[0]

    def _outputs(self, name: str) -> list:
        """The graph's outputs for ``name``: ``proba`` the probabilities, ``scored`` also the pooled features."""
        if name == "proba":
            return [self.model.output]
        return [self.model.output, self.model.get_layer(self.card["out_of_domain"]["features_layer"]).output]

    def _run(self, name: str, images: Sequence[np.ndarray], batch_pixels: int) -> list[np.ndarray]:
        """The outputs ``name`` for decoded images, each ``(n, ...)``, at most ``batch_pixels`` pixels per call."""
        layers = self._resize_layers()
        if not images:
            return [np.zeros((0, *tensor.shape[1:]), np.float32) for tensor in self._outputs(name)]
        if not layers or self.input_size is None:
            return self._run_whole(name, images, batch_pixels)
        sizes = [int(layer.get_config()["height"]) for layer in layers]
        hows = [_resize_of(layer) for layer in layers]
        parts = []
        per_call = max(1, batch_pixels // sum(size * size for size in sizes))
        for start in range(0, len(images), per_call):
            part = images[start : start + per_call]
            batches = [np.empty((len(part), size, size, 3), np.float32) for size in sizes]
            for batch, size, how in zip(batches, sizes, hows):
                for row, image in enumerate(part):
                    resize_image(image, size, how, batch[row])
            parts.append(self._call(name, layers, batches))
        return [np.concatenate(arrays) for arrays in zip(*parts)]

    def _call(self, name: str, layers: list, batches: list[np.ndarray]) -> list[np.ndarray]:
        """The graph after the resize layers on float32 batches (one per resize layer).

        The OpenVINO runtime is extraction's (:mod:`pipeline.extraction.runtimes.openvino_runtime`):
        the graph converted and compiled with the f32 hint, once per batch size
        (Keras' OpenVINO ``predict_on_batch`` compiles with OpenVINO's default
        precision, bf16 on CPUs that have it: probabilities off by 0.03 here).
        """
        if name not in self._bodies:
            import keras

            inputs = layers[0].output if len(layers) == 1 else [layer.output for layer in layers]
            self._bodies[name] = keras.Model(inputs, self._outputs(name), name=f"after_resize_{name}")
        body = self._bodies[name]
        if self.runtime != "openvino":
            got = body.predict_on_batch(batches[0] if len(batches) == 1 else batches)
        else:
            key = (name, len(batches[0]))
            if key not in self._steps:
                self._steps[key] = _openvino_step(body, len(batches[0]), len(batches))
            got = self._steps[key](batches)
        return [np.asarray(a, np.float32) for a in (got if isinstance(got, (list, tuple)) else [got])]

    def _run_whole(self, name: str, images: Sequence[np.ndarray], batch_pixels: int) -> list[np.ndarray]:
        """A model without a resize layer: the images themselves, those of one size together."""
        import keras

        outputs = self._outputs(name)
        if name != "proba" and ("whole", name) not in self._bodies:  # built once, kept with the other graphs
            self._bodies[("whole", name)] = keras.Model(self.model.inputs, outputs)
        model = self.model if name == "proba" else self._bodies[("whole", name)]
        out: list[np.ndarray | None] = [None] * len(outputs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        for shape, indices in groups.items():
            per_call = max(1, batch_pixels // max(1, shape[0] * shape[1]))
            for start in range(0, len(indices), per_call):
                part = indices[start : start + per_call]
                batch = np.stack([images[i] for i in part]).astype(np.uint8, copy=False)
                got = model.predict_on_batch(batch)
                for i, array in enumerate(got if isinstance(got, (list, tuple)) else [got]):
                    array = np.asarray(array, np.float32)
                    if out[i] is None:
                        out[i] = np.zeros((len(images), *array.shape[1:]), np.float32)
                    out[i][part] = array
        return out


def _resize_of(layer: Any) -> Any:
    """A resize layer's settings as a :class:`~pipeline.backbones.registry.Resize`."""
    from pipeline.backbones.registry import Resize

    config = layer.get_config()
    return Resize(
        interpolation=config["interpolation"],
        crop_to_aspect_ratio=config["crop_to_aspect_ratio"],
        pad_to_aspect_ratio=config["pad_to_aspect_ratio"],
        antialias=config["antialias"],
    )


def _openvino_step(body: Any, batch_size: int, n_inputs: int):
    """``body`` (float32 batches → outputs) compiled by OpenVINO with the f32 hint, for ``batch_size`` images.

    One input: extraction's own step. Several (one per input size): the graph exported with one input
    signature per size, each OpenVINO input matched to its batch by shape.
    """
    from pipeline.extraction.runtime_choice import Runtime
    from pipeline.extraction.runtimes import compile_step

    if n_inputs == 1:
        runtime = Runtime(name="openvino", device="CPU", precision="float32", batch_size=batch_size, jit_compile=False)
        step = compile_step(runtime, body, lambda x: x, batch_size=batch_size)
        return lambda batches: step(batches[0])
    import keras
    import openvino as ov

    shapes = [(batch_size, *tensor.shape[1:]) for tensor in body.inputs]
    with tempfile.TemporaryDirectory(prefix="shoulders-openvino-") as tmp:
        path = Path(tmp) / "model.xml"
        body.export(
            str(path),
            format="openvino",
            verbose=False,
            input_signature=[[keras.InputSpec(shape=shape, dtype="float32") for shape in shapes]],
        )
        converted = ov.Core().read_model(str(path))
    compiled = ov.Core().compile_model(
        converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()
    order = []
    for port in compiled.inputs:
        shape = tuple(port.get_partial_shape().to_shape())
        matches = [i for i, s in enumerate(shapes) if tuple(s) == shape and i not in order]
        order.append(matches[0] if matches else len(order))
    outputs = len(body.outputs)

    def run(batches: list[np.ndarray]):
        request.infer({port: np.ascontiguousarray(batches[i], np.float32) for port, i in enumerate(order)})
        # The output tensors' memory is reused by the next inference: copy them out.
        got = [np.array(request.get_output_tensor(i).data, dtype=np.float32) for i in range(outputs)]
        return got[0] if outputs == 1 else got

    return run
