"""The registry of head kinds: one entry per kind says everything about it.

A :class:`HeadKind` names the kind's settings in params.yaml (``heads.<kind>``,
a frozen dataclass whose tuple fields listed in ``swept`` are swept), how to
make its unfitted estimator from one grid point, its out-of-core form (or none),
its exact Keras form (or none), whether its grid is fitted as one warm-started
path, and where it is fitted. Params loading, the grid, the sweep, the
out-of-core path and the exported model all read this registry, so a new kind
is one :func:`register` call with its estimator — nothing else changes::

    @dataclass(frozen=True)
    class CentroidGrid:
        shrink_threshold: tuple[float, ...] = (0.0,)

    register(HeadKind("centroid", CentroidGrid, swept=("shrink_threshold",),
                      estimator=lambda p, grid, seed: NearestCentroid(**p)))

Estimator factories import scikit-learn (and Keras) only when called, so
loading params does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import add_head_kind, remove_head_kind
from pipeline.heads import conversion

# (swept values by name, the kind's settings, seed) → unfitted estimator
EstimatorFactory = Callable[[Mapping[str, Any], Any, int], Any]
# (swept values, the kind's settings, StreamingContext) → unfitted out-of-core estimator
StreamingFactory = Callable[[Mapping[str, Any], Any, "StreamingContext"], Any]
# (fitted classifier, layer-name prefix, temperature or None) → Keras layers giving probabilities
KerasForm = Callable[[Any, str, float | None], list]
# (unfitted estimators, one input matrix each, their labels: one array or one per estimator) → fitted together
FitTogether = Callable[[Sequence[Any], Sequence[Any], Any], list]


@dataclass(frozen=True)
class StreamingContext:
    """What an out-of-core estimator needs beyond the kind's own settings."""

    n_train: int  # rows it is trained on (scales SGD's alpha from C)
    epochs: int  # heads.out_of_core_epochs
    standardize: bool
    seed: int


@dataclass(frozen=True)
class HeadKind:
    """One kind of head and everything the pipeline needs to know about it.

    Attributes
    ----------
    name : str
        The kind in ``heads.kinds`` and in variant ids.
    grid : type
        Frozen dataclass of ``heads.<name>`` in params.yaml; its fields take
        the kind's defaults.
    swept : tuple of str
        Fields of ``grid`` that are lists of values to sweep (their product is the grid).
    estimator : callable
        ``estimator(values, grid, seed)``: the unfitted scikit-learn estimator of one grid point.
    streaming : callable, optional
        ``streaming(values, grid, context)``: the estimator trained block by block
        from dask arrays (out of core); ``None``: the kind has no such form.
    keras : callable, optional
        ``keras(fitted, name, temperature)``: exact Keras layers from pooled
        (preprocessed) features to class probabilities; ``temperature`` is the
        β of temperature scaling for kinds without probabilities of their own.
        ``None``: no exact Keras form (the export says so).
    probabilities : bool
        Whether the fitted estimator gives ``predict_proba`` itself (else it is
        calibrated on validation for export).
    path : str, optional
        A swept setting fitted as one warm-started path in ascending order (C).
    in_process : bool
        Fit in the stage's own process rather than a worker, after the
        scikit-learn jobs, racing them under cross-validation (dense: JAX
        is then imported once).
    fit_together : callable, optional
        ``fit_together(estimators, inputs, y)``: fits many variants of the kind
        in one pass, each on its own input matrix with its labels (``y``: one
        array for all, or one per estimator: the folds of a cross-validation),
        with the results each would get alone. Variants that read the same rows then
        form one job (:func:`pipeline.heads.sweep.plan_jobs`) while the kind's
        settings say ``batched: true`` (the grid needs that field).
    fit_order : int
        Jobs start in ascending order (slow kinds first, so the last to finish is short).
    search : str, optional
        A swept setting searched coarse to fine on a log scale (C) when the
        kind's settings have ``refine`` > 0 (:mod:`pipeline.heads.search`):
        the listed values are the coarse pass.
    simplicity : int
        Ties of the selection score go to the kind with the lowest value (the simplest).
    regularisation : tuple of (str, int)
        Swept settings that order variants of this kind from most to least
        regularised, each with its direction: ``("C", 1)`` puts the smallest C
        first, ``("dropout", -1)`` the largest dropout. Ties of the selection
        score go to the most regularised variant.
    """

    name: str
    grid: type
    swept: tuple[str, ...]
    estimator: EstimatorFactory
    streaming: StreamingFactory | None = None
    keras: KerasForm | None = None
    probabilities: bool = True
    path: str | None = None
    in_process: bool = False
    fit_together: FitTogether | None = None
    fit_order: int = 5
    search: str | None = None
    simplicity: int = 5
    regularisation: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        fields = {f.name for f in dataclasses.fields(self.grid)}
        missing = [name for name in self.swept if name not in fields]
        if missing:
            raise ValueError(
                f"head kind {self.name!r}: swept settings {missing} are not fields of "
                f"{self.grid.__name__} ({sorted(fields)})"
            )
        unknown = [name for name, _ in self.regularisation if name not in self.swept]
        if unknown:
            raise ValueError(f"head kind {self.name!r}: regularisation settings {unknown} are not swept ({self.swept})")
        if self.search is not None and (self.search not in self.swept or "refine" not in fields):
            raise ValueError(
                f"head kind {self.name!r}: search {self.search!r} must be a swept setting, and "
                f"{self.grid.__name__} needs a `refine` field (rounds of bisection)"
            )
        if self.fit_together is not None and "batched" not in fields:
            raise ValueError(
                f"head kind {self.name!r}: fit_together needs a `batched` field in "
                f"{self.grid.__name__} (whether to use it)"
            )
        if self.path is not None and self.path not in self.swept:
            raise ValueError(f"head kind {self.name!r}: path {self.path!r} must be one of its swept settings")


HEAD_KINDS: dict[str, HeadKind] = {}


def register(kind: HeadKind) -> HeadKind:
    """Add a kind to the registry (its name must be new)."""
    if kind.name in HEAD_KINDS:
        raise ValueError(f"head kind {kind.name!r} is registered already")
    HEAD_KINDS[kind.name] = kind
    add_head_kind(kind.name, kind.grid)  # heads.<name> in params.yaml, parsed into kind.grid
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that register a toy kind undo it)."""
    HEAD_KINDS.pop(name, None)
    remove_head_kind(name)


def head_kind(name: str) -> HeadKind:
    """Look up a kind; an unknown name lists the registered ones."""
    if name not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {name!r}. Valid kinds: {', '.join(HEAD_KINDS)}")
    return HEAD_KINDS[name]


# --------------------------------------------------------------------------- settings checks


def _each(key: str, values, ok: Callable[[Any], bool], expected: str) -> None:
    if not values:
        raise ValueError(f"{key} must list at least one value. Received: []")
    for value in values:
        if not ok(value):
            raise ValueError(f"{key} must be {expected}. Received: {value!r}")


def _one(key: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key} must be {expected}. Received: {value!r}")


def _positive(value) -> bool:
    return value > 0


def _gamma(value) -> bool:
    return value in ("scale", "auto") if isinstance(value, str) else value > 0


# --------------------------------------------------------------------------- the kinds' settings


def _decades(low: int, high: int) -> tuple[float, ...]:
    return tuple(float(f"1e{e}") for e in range(low, high + 1))


@dataclass(frozen=True)
class LogRegGrid:
    C: tuple[float, ...] = _decades(-6, 4)  # the coarse pass of the search (every value when refine is 0)
    refine: int = 3  # rounds of bisection on the log scale around the best C
    max_iter: int = 2000

    def __post_init__(self):
        _each("heads.logreg.C", self.C, _positive, "numbers > 0")
        _one("heads.logreg.refine", self.refine, self.refine >= 0, "an integer >= 0 (0: the listed C only)")
        _one("heads.logreg.max_iter", self.max_iter, self.max_iter >= 1, "an integer >= 1")


@dataclass(frozen=True)
class SvmLinearGrid:
    # LinearSVC's dual solver stops converging in its default iterations past C ~ 1e2 on standardised features.
    C: tuple[float, ...] = _decades(-6, 2)
    refine: int = 3

    def __post_init__(self):
        _each("heads.svm_linear.C", self.C, _positive, "numbers > 0")
        _one("heads.svm_linear.refine", self.refine, self.refine >= 0, "an integer >= 0 (0: the listed C only)")


@dataclass(frozen=True)
class SvmRbfGrid:
    C: tuple[float, ...] = (1.0, 10.0)
    gamma: tuple[float | str, ...] = ("scale",)

    def __post_init__(self):
        _each("heads.svm_rbf.C", self.C, _positive, "numbers > 0")
        _each("heads.svm_rbf.gamma", self.gamma, _gamma, "'scale', 'auto' or a number > 0")


@dataclass(frozen=True)
class SvmPolyGrid:
    C: tuple[float, ...] = (1.0,)
    gamma: tuple[float | str, ...] = ("scale",)
    degree: tuple[int, ...] = (2, 3)

    def __post_init__(self):
        _each("heads.svm_poly.C", self.C, _positive, "numbers > 0")
        _each("heads.svm_poly.gamma", self.gamma, _gamma, "'scale', 'auto' or a number > 0")
        _each("heads.svm_poly.degree", self.degree, lambda d: d >= 1, "integers >= 1")


@dataclass(frozen=True)
class DenseGrid:
    hidden_units: tuple[int, ...] = (256,)
    dropout: tuple[float, ...] = (0.0, 0.5)
    weight_decay: tuple[float, ...] = (0.0, 1e-3)  # L2 penalty on the kernels (0: none)
    learning_rate: tuple[float, ...] = (0.001,)
    epochs: tuple[int, ...] = (60,)
    batch_size: int = 64
    patience: int = 8
    validation_fraction: float = 0.15
    batched: bool = (
        True  # variants (× folds) that read the same rows train as one JAX program (pipeline.heads.dense_batch)
    )

    def __post_init__(self):
        _each("heads.dense.hidden_units", self.hidden_units, lambda n: n >= 0, "integers >= 0 (0: no hidden layer)")
        _each("heads.dense.dropout", self.dropout, lambda p: 0.0 <= p < 1.0, "numbers in [0, 1)")
        _each("heads.dense.weight_decay", self.weight_decay, lambda w: w >= 0, "numbers >= 0 (0: no penalty)")
        _each("heads.dense.learning_rate", self.learning_rate, _positive, "numbers > 0")
        _each("heads.dense.epochs", self.epochs, lambda e: e >= 1, "integers >= 1")
        _one("heads.dense.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        _one("heads.dense.patience", self.patience, self.patience >= 0, "an integer >= 0 (0: no early stopping)")
        _one(
            "heads.dense.validation_fraction",
            self.validation_fraction,
            0.0 < self.validation_fraction < 0.5,
            "a number in (0, 0.5)",
        )
        _one("heads.dense.batched", self.batched, isinstance(self.batched, bool), "true or false")


# --------------------------------------------------------------------------- estimators


def _logreg(values, grid: LogRegGrid, seed: int):
    from sklearn.linear_model import LogisticRegression

    # warm_start: fitted along its C path (pipeline.heads.sweep), each C starts from the previous solution. A
    # tight tolerance makes the path a C is reached by immaterial (racing skips values on later folds): with
    # the default 1e-4 the warm start changed near-tied scores, and so choices (BENCHMARKS.md).
    return LogisticRegression(C=values["C"], max_iter=grid.max_iter, warm_start=True, random_state=seed, tol=1e-6)


def _svm_linear(values, grid: SvmLinearGrid, seed: int):
    from pipeline.heads.linear_svm import RowSpaceLinearSVC

    # The dual always: at the large C of a search liblinear's primal (what dual="auto" picks for tall matrices)
    # runs up to 9x longer to its iteration limit (BENCHMARKS.md); both solve the same problem.
    return RowSpaceLinearSVC(C=values["C"], dual=True, random_state=seed)


def _svm_rbf(values, grid: SvmRbfGrid, seed: int):
    from pipeline.heads.kernel_svm import KernelMatrixSVC

    # Solved on the kernel matrix, computed once per training matrix for every C (pipeline.heads.kernel_svm).
    return KernelMatrixSVC(kernel="rbf", C=values["C"], gamma=values["gamma"], random_state=seed)


def _svm_poly(values, grid: SvmPolyGrid, seed: int):
    from sklearn.svm import SVC

    return SVC(kernel="poly", C=values["C"], gamma=values["gamma"], degree=values["degree"], random_state=seed)


DENSE_SWEPT = ("hidden_units", "dropout", "weight_decay", "learning_rate", "epochs")


def _dense_settings(values, grid: DenseGrid) -> dict:
    """The settings a dense head takes alike in memory and out of core: its swept values and batch size."""
    return {name: values[name] for name in DENSE_SWEPT} | {"batch_size": grid.batch_size}


def _dense(values, grid: DenseGrid, seed: int):
    from pipeline.heads.dense import DenseHead

    return DenseHead(
        **_dense_settings(values, grid),
        patience=grid.patience,
        validation_fraction=grid.validation_fraction,
        random_state=seed,
    )


def _dense_together(estimators, inputs, y) -> list:
    from pipeline.heads.dense_batch import fit_dense_heads

    return fit_dense_heads(estimators, inputs, y)


def _linear_sgd(loss: str) -> StreamingFactory:
    def make(values, grid, context: StreamingContext):
        from pipeline.heads.streaming import StreamingLinearHead

        # alpha = 1 / (C · n_train): the same penalty as scikit-learn's C.
        return StreamingLinearHead(
            loss=loss,
            alpha=1.0 / (values["C"] * context.n_train),
            epochs=context.epochs,
            standardize=context.standardize,
            random_state=context.seed,
        )

    return make


def _dense_streaming(values, grid: DenseGrid, context: StreamingContext):
    from pipeline.heads.streaming import StreamingDenseHead

    return StreamingDenseHead(
        **_dense_settings(values, grid),
        standardize=context.standardize,
        random_state=context.seed,
    )


register(
    HeadKind(
        "logreg",
        LogRegGrid,
        swept=("C",),
        estimator=_logreg,
        streaming=_linear_sgd("log_loss"),
        keras=conversion.logistic_layers,
        path="C",
        search="C",
        fit_order=3,
        simplicity=0,
        regularisation=(("C", 1),),
    )
)
register(
    HeadKind(
        "svm_linear",
        SvmLinearGrid,
        swept=("C",),
        estimator=_svm_linear,
        streaming=_linear_sgd("hinge"),
        keras=conversion.linear_svm_layers,
        probabilities=False,
        search="C",
        fit_order=2,
        simplicity=1,
        regularisation=(("C", 1),),
    )
)
register(
    HeadKind(
        "svm_rbf",
        SvmRbfGrid,
        swept=("C", "gamma"),
        estimator=_svm_rbf,
        keras=conversion.svc_layers,
        probabilities=False,
        fit_order=1,
        simplicity=3,
        regularisation=(("C", 1),),
    )
)
register(
    HeadKind(
        "svm_poly",
        SvmPolyGrid,
        swept=("C", "gamma", "degree"),
        estimator=_svm_poly,
        keras=conversion.svc_layers,
        probabilities=False,
        fit_order=0,
        simplicity=4,
        regularisation=(("degree", 1), ("C", 1)),
    )
)
register(
    HeadKind(
        "dense",
        DenseGrid,
        swept=DENSE_SWEPT,
        estimator=_dense,
        streaming=_dense_streaming,
        keras=conversion.dense_layers,
        in_process=True,
        fit_together=_dense_together,
        fit_order=4,
        simplicity=2,
        regularisation=(("hidden_units", 1), ("dropout", -1), ("weight_decay", -1)),
    )
)
