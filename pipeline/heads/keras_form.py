"""A fitted head pipeline as Keras layers, through its kind's entry in the registry.

A head learned on cached features (standardisation, optional PCA, then the
classifier) becomes a stack of Keras layers computing the same probabilities,
so it can sit on top of the truncated backbone: the fine-tune stage starts from
it and an exported model carries it. Preprocessing converts by
:func:`pipeline.heads.conversion.preprocessing_layers`; the classifier by its
kind's ``keras`` form, with the β of temperature scaling when the head was
calibrated for probabilities (``CalibratedClassifierCV(FrozenEstimator(head),
method="temperature")``). A kind without a Keras form raises
:class:`~pipeline.heads.conversion.NotConvertibleError` naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.heads.conversion import NotConvertibleError, preprocessing_layers
from pipeline.heads.registry import head_kind


def pipeline_steps(estimator: Any) -> list[tuple[str, Any]]:
    """The (name, step) pairs of a fitted estimator, a bare classifier being one step."""
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return [("head", estimator)]
    return [(name, step) for name, step in steps if step not in (None, "passthrough")]


def to_keras_layers(estimator: Any, kind: str, *, name: str = "head") -> list:
    """Keras layers that map pooled features to the estimator's class probabilities.

    Parameters
    ----------
    estimator : fitted sklearn Pipeline or classifier, or its temperature calibration
    kind : str
        The head kind it was made as (the score row's ``kind``).
    name : str
        Prefix of the layers' names.

    Returns
    -------
    list of keras layers
        Apply in order to a tensor of shape (n, n_features); the last gives
        probabilities of shape (n, n_classes) in ``classes_`` order.

    Raises
    ------
    NotConvertibleError
        For a step or kind without an exact equivalent.
    """
    temperature, inner = _temperature(estimator)
    *preprocessing, (head_name, head) = pipeline_steps(inner)
    layers = []
    for index, (step_name, step) in enumerate(preprocessing):
        layers.extend(preprocessing_layers(step, f"{name}_{index}_{step_name}"))
    entry = head_kind(kind)
    if entry.keras is None:
        raise NotConvertibleError(f"{kind} heads ({type(head).__name__}) have no exact Keras form")
    return layers + entry.keras(head, f"{name}_{len(preprocessing)}_{head_name}", temperature)


def _temperature(estimator: Any) -> tuple[float | None, Any]:
    """(β, the calibrated pipeline) of a temperature-scaled frozen head; (None, estimator) otherwise."""
    from sklearn.calibration import CalibratedClassifierCV

    if not isinstance(estimator, CalibratedClassifierCV):
        return None, estimator
    if len(estimator.calibrated_classifiers_) != 1 or estimator.method != "temperature":
        raise NotConvertibleError(
            "only temperature scaling fitted once (on a frozen estimator) converts exactly; "
            f"received method={estimator.method!r} with "
            f"{len(estimator.calibrated_classifiers_)} calibrated classifiers"
        )
    calibrated = estimator.calibrated_classifiers_[0]
    inner = getattr(calibrated.estimator, "estimator", calibrated.estimator)  # unwrap FrozenEstimator
    return calibrated.calibrators[0].beta_, inner


def classes_of(estimator: Any) -> np.ndarray:
    """The class labels of a fitted estimator, in the order of its probability columns."""
    return np.asarray(estimator.classes_)
