"""The grid of head variants trained on cached features, and the estimators that make them.

Every head is a scikit-learn estimator, the Keras dense head included
(:class:`~pipeline.heads.dense.DenseHead`), so one loop, ``clone``, ``joblib`` and
grid searches serve all of them. :func:`expand_grid` turns the ``heads``
section of params.yaml into :class:`Variant` objects — pooling × standardisation
× PCA × head kind × that kind's swept hyperparameters (from its entry in
:mod:`pipeline.heads.registry`) — each with a stable, readable id:

* ``avg-logreg-C0.1`` — average pooling, standardised, logistic regression;
* ``avgmax-nostd-svm_linear-C1`` — avg and max pooling concatenated, not standardised;
* ``max-pca64-svm_rbf-C10-gscale`` — max pooling, standardised, PCA to 64 components;
* ``flatten-pca0.95-dense-h256-d0.5-lr0.001-e60`` — PCA keeping 95% of the variance;
* ``avg-logreg-C1-aug-tta`` — trained on clean + cached augmented views, scored with
  test-time augmentation; ``-augdraw`` draws one view per image per epoch (dense heads).

The default preprocessing (standardised, no PCA) adds nothing to the id, so ids
of a grid that does not sweep preprocessing stay short.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.config import HeadsParams
from pipeline.heads.registry import head_kind

# Short names that make variant ids readable and stable (other settings keep their own name).
_ABBREVIATIONS = {
    "C": "C",
    "gamma": "g",
    "degree": "deg",
    "hidden_units": "h",
    "dropout": "d",
    "weight_decay": "wd",
    "learning_rate": "lr",
    "epochs": "e",
}


@dataclass(frozen=True)
class Variant:
    """One point of the heads grid: pooling, preprocessing, a head kind and its hyperparameters."""

    kind: str
    pooling: str
    params: tuple[tuple[str, Any], ...]
    standardize: bool = True
    pca: int | float | None = None
    augment: str = "none"  # none | stack | draw (see HeadsParams)
    tta: bool = False

    @property
    def id(self) -> str:
        parts = [self.pooling, *self.preprocessing_tags, self.kind]
        parts += [f"{_ABBREVIATIONS.get(k, k)}{_fmt(v)}" for k, v in self.params]
        parts += {"none": [], "stack": ["aug"], "draw": ["augdraw"]}[self.augment] + (["tta"] if self.tta else [])
        return "-".join(parts)

    @property
    def uses_views(self) -> bool:
        """Whether the variant reads the cached augmented views."""
        return self.augment != "none" or self.tta

    @property
    def preprocessing_tags(self) -> list[str]:
        return ([] if self.standardize else ["nostd"]) + ([] if self.pca is None else [f"pca{_fmt(self.pca)}"])

    @property
    def features_key(self) -> tuple[str, bool, int | float | None, str, bool]:
        """What the head's input depends on: variants sharing it share one preprocessed matrix."""
        return (self.pooling, self.standardize, self.pca, self.augment, self.tta)

    def hyperparameters(self) -> dict[str, Any]:
        """Every swept setting by name, for reports: pooling, standardize, pca, augment, tta and the kind's own."""
        return {
            "pooling": self.pooling,
            "standardize": self.standardize,
            "pca": self.pca,
            "augment": self.augment,
            "tta": self.tta,
            **dict(self.params),
        }


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_grid(heads: HeadsParams) -> list[Variant]:
    """Every variant of the grid, in a stable order.

    The order is pooling, standardisation, PCA, kind (as listed), then the
    product of the kind's swept values as listed in params.yaml.

    Raises
    ------
    ValueError
        If two grid points get the same id (a value listed twice).
    """
    variants = []
    for pooling, standardize, pca, augment, tta in itertools.product(
        heads.pooling, heads.standardize, heads.pca, heads.augment, heads.tta
    ):
        for kind in heads.kinds:
            if augment == "draw" and kind != "dense":
                continue  # drawing a view per epoch needs epochs: dense heads only
            grid = heads.grid(kind)
            names = head_kind(kind).swept
            for values in itertools.product(*(getattr(grid, n) for n in names)):
                variants.append(
                    Variant(
                        kind=kind,
                        pooling=pooling,
                        params=tuple(zip(names, values)),
                        standardize=standardize,
                        pca=pca,
                        augment=augment,
                        tta=tta,
                    )
                )
    ids = [v.id for v in variants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(
            f"the heads grid lists the same variant twice: {duplicates}; "
            "remove the repeated value from params.yaml `heads`"
        )
    return variants


def make_preprocessor(variant: Variant, heads: HeadsParams) -> Pipeline | None:
    """Standardisation and PCA for a variant, unfitted; ``None`` when it has neither."""
    steps: list[tuple[str, Any]] = []
    if variant.standardize:
        steps.append(("standardize", StandardScaler()))
    if variant.pca is not None:
        steps.append(("pca", PCA(n_components=variant.pca, random_state=heads.seed)))
    return Pipeline(steps) if steps else None


def make_head(variant: Variant, heads: HeadsParams):
    """The unfitted classifier of a variant (no preprocessing), made by its kind's registry entry."""
    return head_kind(variant.kind).estimator(dict(variant.params), heads.grid(variant.kind), heads.seed)


def predict_views(estimator: Any, X: np.ndarray) -> np.ndarray:
    """Labels for ``X`` of shape (n, d); or, for views of shape (n, V, d), the class of the mean over views.

    The mean is of class probabilities when the estimator gives them, else of
    its decision function (SVMs): test-time augmentation.
    """
    if X.ndim == 2:
        return estimator.predict(X)
    n, views = X.shape[:2]
    flat = X.reshape(n * views, *X.shape[2:])
    scores = estimator.predict_proba(flat) if hasattr(estimator, "predict_proba") else estimator.decision_function(flat)
    mean = np.asarray(scores).reshape(n, views, -1).mean(axis=1)
    index = (mean[:, 0] > 0).astype(int) if mean.shape[1] == 1 else mean.argmax(axis=1)
    return np.asarray(estimator.classes_)[index]


def make_estimator(variant: Variant, heads: HeadsParams) -> Pipeline:
    """The whole unfitted scikit-learn pipeline of a variant: [standardize] → [pca] → head."""
    preprocessor = make_preprocessor(variant, heads)
    steps = list(preprocessor.steps) if preprocessor is not None else []
    return Pipeline([*steps, ("head", make_head(variant, heads))])
