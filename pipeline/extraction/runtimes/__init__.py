"""Inference runtimes: one compiled step per runtime, the same contract for all.

``compile_step(runtime, model, preprocess, batch_size=...)`` returns a function
from a float32 batch of raw 0–255 images of exactly ``batch_size`` rows to the
cut layer's features as float32 numpy. A step may also have a ``stream``
method, ``stream(batches) -> iterator of features`` in the order of the
batches, which keeps several batches in flight (OpenVINO: one per CPU stream);
:func:`stream` uses it where there is one, and calls the step batch by batch
where there is not. Whatever times or runs many batches (extraction, the batch
size measurement, ``backbone_cost``) goes through :func:`stream`. Each runtime
lives in a module of its own and imports its framework only when called: :mod:`.tensorflow_runtime`,
:mod:`.openvino_runtime`, :mod:`.jax_runtime` (see :mod:`pipeline.extraction.runtime_choice`
for how one is chosen).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]


def compile_step(runtime: Any, model: Any, preprocess: Callable, *, batch_size: int) -> Step:
    """The compiled inference step of ``model`` (after ``preprocess``) on ``runtime``, for batches of ``batch_size``."""
    module = importlib.import_module(f"pipeline.extraction.runtimes.{runtime.name}_runtime")
    return module.compile_step(model, preprocess, batch_size=batch_size, runtime=runtime)


def stream(step: Step, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """``step`` over ``batches``, in order: through its ``stream`` method (several batches in flight) if it has one."""
    streaming = getattr(step, "stream", None)
    if streaming is not None:
        yield from streaming(batches)
    else:
        for batch in batches:
            yield step(batch)
