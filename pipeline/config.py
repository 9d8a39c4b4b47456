"""params.yaml → frozen dataclasses, and every check on parameters.

``params.yaml`` is the one source of truth of the pipeline. It is sectioned by
stage; each stage loads only its own section through :func:`load_params` and
receives frozen dataclasses. Loading rejects unknown or misspelled keys, wrong
types and bad values with a :class:`ParamsError` that names the key, the value
received and the allowed choices, before any image is read or any backbone runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

DEFAULT_PARAMS = Path("params.yaml")
HEAD_KINDS = ("logreg", "svm_linear", "svm_rbf", "svm_poly", "dense")
POOLINGS = ("avg", "max", "flatten", "avgmax")
SPLITS = ("train", "val", "test")
_FEATURE_SET_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ParamsError(ValueError):
    """A parameter in params.yaml is unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SplitRatios:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self):
        for name in SPLITS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParamsError(
                    f"data.split.{name} must be between 0 and 1. Received: {name}={value!r}"
                )
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ParamsError(
                "data.split ratios must sum to 1. Received: "
                f"train={self.train}, val={self.val}, test={self.test} (sum {total:g})"
            )
        if self.train == 0 or self.test == 0:
            raise ParamsError(
                "data.split needs a non-zero train and test ratio. Received: "
                f"train={self.train}, test={self.test}"
            )


@dataclass(frozen=True)
class NearDuplicateParams:
    """Opt-in search for near-duplicate images across splits (reported, not removed)."""

    method: Literal["phash"] = "phash"
    max_distance: int = 6   # bits in which two 64-bit perceptual hashes may differ

    def __post_init__(self):
        _require(0 <= self.max_distance <= 32, "data.near_duplicates.max_distance", self.max_distance,
                 "an integer from 0 to 32 (differing bits out of 64; past 32 any two images match)")


@dataclass(frozen=True)
class DataParams:
    """Where the images come from and how they are split (stage: prepare)."""

    source: str = "data/synthetic"
    split: SplitRatios = field(default_factory=SplitRatios)
    seed: int = 0
    bad_images: Literal["error", "skip"] = "error"
    duplicates: Literal["remove", "keep"] = "remove"
    near_duplicates: Optional[NearDuplicateParams] = None
    small_image_side: int = 32

    def __post_init__(self):
        if not self.source.strip():
            raise ParamsError("data.source must name a folder. Received: an empty string")
        _require(self.small_image_side >= 1, "data.small_image_side", self.small_image_side, "an integer >= 1")


@dataclass(frozen=True)
class SyntheticParams:
    """The built-in generated dataset (stage: synthesize)."""

    classes: int = 6
    per_class: int = 150
    image_size: int = 128
    seed: int = 0

    def __post_init__(self):
        from pipeline.synthetic import CLASS_NAMES

        _require(2 <= self.classes <= len(CLASS_NAMES), "synthetic.classes", self.classes,
                 f"an integer from 2 to {len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)})")
        _require(self.seed >= 0, "synthetic.seed", self.seed, "an integer >= 0")
        _require(self.per_class >= 1, "synthetic.per_class", self.per_class, "an integer >= 1")
        _require(self.image_size >= 16, "synthetic.image_size", self.image_size, "an integer >= 16")


@dataclass(frozen=True)
class FeatureSetParams:
    """One backbone × weights × cut × input size: one extract stage, one Zarr store."""

    backbone: str
    weights: str = "imagenet"
    cut: Optional[str] = None
    size: Optional[int] = None
    alpha: Optional[float] = None
    dtype: Optional[Literal["float16", "float32"]] = None   # overrides extract.dtype


def _default_augment_ops() -> dict[str, Union[float, str]]:
    return {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1, "translation": 0.1, "contrast": 0.2}


@dataclass(frozen=True)
class AugmentParams:
    """Augmented views of the training split, cached beside the clean features (stage: augment)."""

    views: int = 0                 # K seeded augmented passes; 0: none
    seed: int = 0
    ops: dict[str, Union[float, str]] = field(default_factory=_default_augment_ops)
    tta: bool = False              # also compute views of val and test, for test-time augmentation

    def __post_init__(self):
        from pipeline.augmentation import validate_ops

        _require(self.views >= 0, "extract.augment.views", self.views, "an integer >= 0")
        _require(len(self.ops) > 0, "extract.augment.ops", self.ops, "at least one op")
        try:
            validate_ops(self.ops)
        except ValueError as error:
            raise ParamsError(str(error)) from None


@dataclass(frozen=True)
class ExtractParams:
    """How features are computed and stored (stage: extract)."""

    batch_size: Union[int, Literal["auto"]] = "auto"          # auto: 8 on a CPU, 128 on a GPU
    dtype: Literal["float16", "float32"] = "float16"
    chunk_mb: float = 8.0                                    # fewer, larger writes: BENCHMARKS.md
    seed: int = 0
    jit_compile: Union[bool, Literal["auto"]] = "auto"        # auto: XLA on a GPU only
    mixed_precision: Union[bool, Literal["auto"]] = "auto"    # auto: float16 compute on a GPU only
    augment: AugmentParams = field(default_factory=AugmentParams)
    scheduler: Optional[str] = None     # a Dask scheduler address (else $DASK_SCHEDULER_ADDRESS); null: in-process
    shard_chunks: int = 4               # chunks per task sent to a Dask worker

    def __post_init__(self):
        _require(self.shard_chunks >= 1, "extract.shard_chunks", self.shard_chunks, "an integer >= 1")
        if self.batch_size != "auto":
            _require(self.batch_size >= 1, "extract.batch_size", self.batch_size, "'auto' or an integer >= 1")
        _require(self.chunk_mb > 0, "extract.chunk_mb", self.chunk_mb, "a number > 0")


@dataclass(frozen=True)
class LogRegGrid:
    C: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    max_iter: int = 2000


@dataclass(frozen=True)
class SvmLinearGrid:
    C: tuple[float, ...] = (0.01, 0.1, 1.0)


@dataclass(frozen=True)
class SvmRbfGrid:
    C: tuple[float, ...] = (1.0, 10.0)
    gamma: tuple[Union[float, str], ...] = ("scale",)


@dataclass(frozen=True)
class SvmPolyGrid:
    C: tuple[float, ...] = (1.0,)
    gamma: tuple[Union[float, str], ...] = ("scale",)
    degree: tuple[int, ...] = (2, 3)


@dataclass(frozen=True)
class DenseGrid:
    hidden_units: tuple[int, ...] = (256,)
    dropout: tuple[float, ...] = (0.0, 0.5)
    learning_rate: tuple[float, ...] = (0.001,)
    epochs: tuple[int, ...] = (60,)
    batch_size: int = 64
    patience: int = 8
    validation_fraction: float = 0.15


@dataclass(frozen=True)
class HeadsParams:
    """The grid of heads trained on every feature set (stage: heads)."""

    kinds: tuple[Literal["logreg", "svm_linear", "svm_rbf", "svm_poly", "dense"], ...] = (
        "logreg", "svm_linear", "svm_rbf", "dense")
    pooling: tuple[Literal["avg", "max", "flatten", "avgmax"], ...] = ("avg",)
    standardize: tuple[bool, ...] = (True,)             # swept: StandardScaler before the head or not
    pca: tuple[Optional[Union[int, float]], ...] = (None,)  # swept: null, components (int) or variance kept (0-1)
    cv: int = 0                                         # k-fold CV on train+val for selection; 0: the val split
    # swept: train on the clean features only ("none"), on clean + every cached augmented view as extra
    # rows ("stack"), or (dense heads) on one view per image drawn afresh each epoch ("draw")
    augment: tuple[Literal["none", "stack", "draw"], ...] = ("none",)
    tta: tuple[bool, ...] = (False,)                    # swept: average predictions over the cached views
    seed: int = 0
    n_jobs: int = 2
    backend: Literal["loky", "dask"] = "loky"           # dask: fit the grid on the cluster of `scheduler`
    scheduler: Optional[str] = None                     # Dask scheduler address (else $DASK_SCHEDULER_ADDRESS)
    out_of_core: Union[bool, Literal["auto"]] = "auto"  # train from the store chunk by chunk (auto: when too big)
    memory_limit_mb: float = 2048.0                     # auto: out of core past this many MB of pooled train features
    out_of_core_epochs: int = 5                         # passes over the chunks of the SGD heads
    logreg: LogRegGrid = field(default_factory=LogRegGrid)
    svm_linear: SvmLinearGrid = field(default_factory=SvmLinearGrid)
    svm_rbf: SvmRbfGrid = field(default_factory=SvmRbfGrid)
    svm_poly: SvmPolyGrid = field(default_factory=SvmPolyGrid)
    dense: DenseGrid = field(default_factory=DenseGrid)

    def __post_init__(self):
        _require(len(self.kinds) > 0, "heads.kinds", self.kinds, f"a non-empty list of {HEAD_KINDS}")
        _require(len(self.pooling) > 0, "heads.pooling", self.pooling, f"a non-empty list of {POOLINGS}")
        _require(len(self.standardize) > 0, "heads.standardize", self.standardize, "a non-empty list of true/false")
        _require(len(self.pca) > 0, "heads.pca", self.pca, "a non-empty list of null, integers >= 1 or numbers in (0, 1)")
        for n in self.pca:
            if isinstance(n, int):
                _require(n >= 1, "heads.pca", n, "null, an integer >= 1 (components) or a number in (0, 1) (variance kept)")
            elif n is not None:
                _require(0.0 < n < 1.0, "heads.pca", n,
                         "null, an integer >= 1 (components) or a number in (0, 1) (variance kept)")
        _require(self.cv == 0 or self.cv >= 2, "heads.cv", self.cv, "0 (select on the val split) or a fold count >= 2")
        _require(self.memory_limit_mb > 0, "heads.memory_limit_mb", self.memory_limit_mb, "a number > 0")
        _require(self.out_of_core_epochs >= 1, "heads.out_of_core_epochs", self.out_of_core_epochs, "an integer >= 1")
        _require(len(self.augment) > 0, "heads.augment", self.augment, "a non-empty list of none, stack, draw")
        _require(len(self.tta) > 0, "heads.tta", self.tta, "a non-empty list of true/false")
        if self.cv and (set(self.augment) != {"none"} or any(self.tta)):
            raise ParamsError(f"heads.augment / heads.tta need heads.cv: 0 (augmented views exist for train, and "
                              f"for val/test only with TTA, not for folds of train+val). Received: cv={self.cv}, "
                              f"augment={list(self.augment)}, tta={list(self.tta)}")
        if "draw" in self.augment and "dense" not in self.kinds:
            raise ParamsError("heads.augment 'draw' (one view per image per epoch) applies to dense heads only; "
                              f"heads.kinds has none. Received: kinds={list(self.kinds)}")
        _require(self.n_jobs != 0, "heads.n_jobs", self.n_jobs, "a non-zero integer (-1: one worker per core)")
        for name in ("logreg", "svm_linear", "svm_rbf", "svm_poly", "dense"):
            grid = getattr(self, name)
            for f in dataclasses.fields(grid):
                value = getattr(grid, f.name)
                if isinstance(value, tuple) and not value:
                    raise ParamsError(f"heads.{name}.{f.name} must list at least one value. Received: []")
        for c in (*self.logreg.C, *self.svm_linear.C, *self.svm_rbf.C, *self.svm_poly.C):
            _require(c > 0, "heads.*.C", c, "numbers > 0")
        for name in ("svm_rbf", "svm_poly"):
            for gamma in getattr(self, name).gamma:
                if (isinstance(gamma, str) and gamma not in ("scale", "auto")) or \
                        (not isinstance(gamma, str) and gamma <= 0):
                    raise ParamsError(
                        f"heads.{name}.gamma must be 'scale', 'auto' or a number > 0. Received: {gamma!r}"
                    )
        for d in self.svm_poly.degree:
            _require(d >= 1, "heads.svm_poly.degree", d, "integers >= 1")
        for e in self.dense.epochs:
            _require(e >= 1, "heads.dense.epochs", e, "integers >= 1")
        for lr in self.dense.learning_rate:
            _require(lr > 0, "heads.dense.learning_rate", lr, "numbers > 0")
        _require(self.dense.batch_size >= 1, "heads.dense.batch_size", self.dense.batch_size, "an integer >= 1")
        for p in self.dense.dropout:
            _require(0.0 <= p < 1.0, "heads.dense.dropout", p, "numbers in [0, 1)")
        for n in self.dense.hidden_units:
            _require(n >= 0, "heads.dense.hidden_units", n, "integers >= 0 (0: no hidden layer)")
        _require(0.0 < self.dense.validation_fraction < 0.5, "heads.dense.validation_fraction",
                 self.dense.validation_fraction, "a number in (0, 0.5)")


@dataclass(frozen=True)
class EvaluateParams:
    """How the best head is chosen and reported (stage: evaluate)."""

    select_by: Literal["accuracy", "macro_f1"] = "accuracy"
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class FinetuneParams:
    """Warm-started fine-tuning of the best dense head with the top of its backbone (stage: finetune)."""

    feature_set: Optional[str] = None   # null: the stage is off
    unfreeze: int = 20                  # top layers of the truncated backbone trained (BatchNorm stays frozen)
    learning_rate: float = 1e-5
    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    augment: bool = True                # train on views made with extract.augment.ops
    seed: int = 0

    def __post_init__(self):
        _require(self.unfreeze >= 0, "finetune.unfreeze", self.unfreeze, "an integer >= 0")
        _require(self.learning_rate > 0, "finetune.learning_rate", self.learning_rate, "a number > 0")
        _require(self.epochs >= 1, "finetune.epochs", self.epochs, "an integer >= 1")
        _require(self.patience >= 0, "finetune.patience", self.patience, "an integer >= 0")
        _require(self.batch_size >= 1, "finetune.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class ExportParams:
    """The deployable model (stage: export)."""

    variant: Optional[str] = None   # null: the best on validation; else "<feature set>/<variant id>"
    tolerance: float = 0.002        # largest probability difference allowed against the pipeline on test

    def __post_init__(self):
        _require(0 < self.tolerance < 1, "export.tolerance", self.tolerance, "a number in (0, 1)")
        if self.variant is not None and "/" not in self.variant:
            raise ParamsError(f"export.variant must be null or '<feature set>/<variant id>'. "
                              f"Received: {self.variant!r}")


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    features: dict[str, FeatureSetParams] = field(default_factory=dict)
    heads: HeadsParams = field(default_factory=HeadsParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    export: ExportParams = field(default_factory=ExportParams)

    def __post_init__(self):
        if self.export.variant is not None and self.export.variant.split("/")[0] not in self.features:
            raise ParamsError(f"export.variant names no feature set. Received: {self.export.variant!r}. "
                              + _suggest(self.export.variant.split("/")[0], self.features))
        chosen = self.finetune.feature_set
        if chosen is not None and chosen not in self.features:
            raise ParamsError(f"finetune.feature_set names no feature set. Received: {chosen!r}. "
                              + _suggest(chosen, self.features))
        for key in self.features:
            if not _FEATURE_SET_KEY.match(key):
                raise ParamsError(
                    f"features: {key!r} is not a usable feature-set name; use letters, digits, "
                    "'_', '-' and '.', starting with a letter or digit"
                )


# --------------------------------------------------------------------------- loading


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate a params.yaml file.

    Parameters
    ----------
    path : path-like
        The YAML file; sections that are missing take their defaults.

    Returns
    -------
    Params
        Frozen, validated parameters.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ParamsError
        For unknown keys, wrong types and bad values; the message names the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path} (run from the project root)")
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    params = parse_params(raw, source=str(path))
    _check_feature_sets(params)
    return params


def parse_params(raw: Any, *, source: str = "params") -> Params:
    """Build :class:`Params` from an already parsed mapping (see :func:`load_params`)."""
    try:
        return _build(Params, raw, "")
    except ParamsError as error:
        raise ParamsError(f"{source}: {error}") from None


def feature_set(params: Params, key: str) -> FeatureSetParams:
    """Look up one feature set by its key in ``features``, with suggestions if unknown."""
    if key not in params.features:
        raise ParamsError(
            f"unknown feature set {key!r}. {_suggest(key, params.features)}"
        )
    return params.features[key]


def _check_feature_sets(params: Params) -> None:
    # Imported here so that loading params for prepare does not need the registry.
    from pipeline.backbones import validate_feature_set

    for key, spec in params.features.items():
        try:
            validate_feature_set(spec)
        except ValueError as error:
            raise ParamsError(f"features.{key}: {error}") from None


def _build(cls: type, raw: Any, keypath: str) -> Any:
    where = keypath or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be a mapping of keys. Received: {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        raise ParamsError(
            f"unknown key {_join(keypath, str(key))!r}. {_suggest(str(key), fields)}"
        )
    missing = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        and name not in raw
    ]
    if missing:
        raise ParamsError(f"missing key {_join(keypath, missing[0])!r} (required)")
    values = {k: _coerce(v, hints[k], _join(keypath, k)) for k, v in raw.items()}
    return cls(**values)


def _coerce(value: Any, annotation: Any, keypath: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, keypath)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, keypath)
            except ParamsError as error:
                errors.append(str(error))
        raise ParamsError(errors[0] if len(errors) == 1 else
                          f"{keypath} has the wrong type. Received: {value!r}; expected one of "
                          + ", ".join(_describe(o) for o in options)
                          + (" or null" if type(None) in args else ""))
    if origin is Literal:
        if value not in args:
            raise ParamsError(
                f"{keypath} must be one of {list(args)}. Received: {value!r}"
                + _did_you_mean(value, args)
            )
        return value
    if origin is tuple:
        item_type = args[0]
        items = value if isinstance(value, list) else [value]
        return tuple(_coerce(v, item_type, f"{keypath}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{keypath} must be a mapping. Received: {value!r}")
        return {str(k): _coerce(v, args[1], _join(keypath, str(k))) for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{keypath} must be true or false. Received: {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{keypath} must be an integer. Received: {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{keypath} must be a number. Received: {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"{keypath} must be a finite number. Received: {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ParamsError(f"{keypath} must be a string. Received: {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {keypath}")  # a bug, not user input


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ParamsError(f"{key} must be {expected}. Received: {value!r}")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _did_you_mean(value: Any, choices: Any) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _suggest(key: str, allowed: Any) -> str:
    allowed = sorted(str(a) for a in allowed)
    close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}Allowed: {', '.join(allowed) if allowed else '(none defined)'}"
