"""The sections of params.yaml as frozen dataclasses, each checking its own values.

One dataclass per section (``data``, ``synthetic``, ``extract``, ``features``,
``heads``, ``evaluate``, ``finetune``, ``export``); :func:`pipeline.config.load_params`
builds them from the YAML, rejecting unknown keys and wrong types, and each
``__post_init__`` checks ranges, raising :class:`ParamsError` with the key, the
value received and what is allowed. What a check needs from the registries
above config (the head kinds and their settings, each backbone's default
weights, the augment ops, the built-in dataset's classes) those registries
register here, at their import (:func:`add_head_kind`, :func:`add_default_weights`,
:func:`add_check`): a registered head kind gets its ``heads.<kind>`` section
here too. The registering modules are named as entry points of the group
``shoulders.params`` in ``pyproject.toml``; :func:`load_registrations` imports
them once, before the first params are parsed, so a plug-in package can add a
head kind or a backbone family the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MAP_POOLINGS = ("avg", "max", "flatten", "avgmax")  # of a map (h, w, c)
TOKEN_POOLINGS = ("cls", "mean", "cls+mean")  # of a token summary (a preset's ViT-like cut)
POOLINGS = (*MAP_POOLINGS, *TOKEN_POOLINGS)
SPLITS = ("train", "val", "test")
# Seeds go to numpy and scikit-learn, which take 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# The largest image (width × height) decoded by default: a 50-megapixel photo takes 150 MB as RGB; the
# decompression bombs PIL lets through (up to ~179 MP) would take gigabytes (see data.max_image_pixels).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
_FEATURE_SET_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ParamsError(ValueError):
    """A parameter in params.yaml is unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------- registrations
# What the checks below need from the registries above config, which import this module and fill
# these tables (see the module docstring); config imports none of them.
ENTRY_POINT_GROUP = "shoulders.params"

_head_kinds: dict[str, type] = {}
_default_weights: dict[str, str] = {}
_checks: dict[str, list[Callable[[Any], None]]] = {}
_loaded = False


def load_registrations() -> None:
    """Import every module registered under :data:`ENTRY_POINT_GROUP` (once).

    Raises
    ------
    RuntimeError
        If no module is registered: the package's metadata is missing.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the imports: a registering module may load params helpers itself
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if not entry_points:
        _loaded = False
        raise RuntimeError(
            f"no modules registered under the entry point group {ENTRY_POINT_GROUP!r}: the package's "
            "metadata is missing. Install it from the project root (pip install -e .) and run again."
        )
    for entry_point in sorted(entry_points, key=lambda e: e.name):
        entry_point.load()


def add_head_kind(name: str, settings: type) -> None:
    """Register a head kind: ``heads.<name>`` is parsed into ``settings`` (a frozen dataclass)."""
    _head_kinds[name] = settings


def remove_head_kind(name: str) -> None:
    """Undo :func:`add_head_kind` (a test's toy kind)."""
    _head_kinds.pop(name, None)


def head_kinds() -> Mapping[str, type]:
    """The registered head kinds, each with the dataclass of its settings, in registration order."""
    load_registrations()
    return _head_kinds


def add_default_weights(backbone: str, weights: str) -> None:
    """What a feature set of ``backbone`` without ``weights`` gets."""
    _default_weights[backbone] = weights


def default_weights(backbone: str) -> str:
    """The default weights of ``backbone``: ``imagenet`` for a name no family registered (its own check
    then names the valid backbones)."""
    load_registrations()
    return _default_weights.get(backbone, "imagenet")


def add_check(section: str, check: Callable[[Any], None]) -> None:
    """Run ``check(value)`` on every ``section`` parsed (``"synthetic"``, ``"extract.augment"``) or
    loaded (``"features"``, each feature set); it raises ``ValueError`` naming what is wrong."""
    _checks.setdefault(section, []).append(check)


def run_checks(section: str, value: Any) -> None:
    """Run the checks registered for ``section`` on ``value``; their ``ValueError`` passes through."""
    load_registrations()
    for check in _checks.get(section, ()):
        check(value)


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
                raise ParamsError(f"data.split.{name} must be between 0 and 1. Received: {name}={value!r}")
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ParamsError(
                "data.split ratios must sum to 1. Received: "
                f"train={self.train}, val={self.val}, test={self.test} (sum {total:g})"
            )
        if self.train == 0 or self.test == 0:
            raise ParamsError(
                f"data.split needs a non-zero train and test ratio. Received: train={self.train}, test={self.test}"
            )


@dataclass(frozen=True)
class NearDuplicateParams:
    """Opt-in search for near-duplicate images across splits (reported, not removed)."""

    method: Literal["phash"] = "phash"
    max_distance: int = 6  # bits in which two 64-bit perceptual hashes may differ

    def __post_init__(self):
        _require(
            0 <= self.max_distance <= 32,
            "data.near_duplicates.max_distance",
            self.max_distance,
            "an integer from 0 to 32 (differing bits out of 64; past 32 any two images match)",
        )


@dataclass(frozen=True)
class DataParams:
    """Where the images come from and how they are split (stage: prepare)."""

    source: str = "data/synthetic"
    split: SplitRatios = field(default_factory=SplitRatios)
    seed: int = 0
    bad_images: Literal["error", "skip"] = "error"
    duplicates: Literal["remove", "keep"] = "remove"
    near_duplicates: NearDuplicateParams | None = None
    small_image_side: int = 32
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images are refused before they are decoded

    def __post_init__(self):
        if not self.source.strip():
            raise ParamsError("data.source must name a folder. Received: an empty string")
        _seed("data.seed", self.seed)
        _require(self.small_image_side >= 1, "data.small_image_side", self.small_image_side, "an integer >= 1")
        from PIL import Image

        # Past twice its MAX_IMAGE_PIXELS, PIL refuses an image itself (a decompression bomb), whatever this says.
        ceiling = 2 * Image.MAX_IMAGE_PIXELS
        _require(
            1 <= self.max_image_pixels <= ceiling,
            "data.max_image_pixels",
            self.max_image_pixels,
            f"an integer from 1 to {ceiling} (width × height of the largest image to decode; PIL refuses more)",
        )


@dataclass(frozen=True)
class SyntheticParams:
    """The built-in generated dataset (stage: synthesize)."""

    classes: int = 6
    per_class: int = 150
    image_size: int = 128
    seed: int = 0

    def __post_init__(self):
        _require(self.classes >= 2, "synthetic.classes", self.classes, "an integer >= 2")
        _checked("synthetic", self)  # the classes the generator draws (pipeline.synthetic)
        _seed("synthetic.seed", self.seed)
        _require(self.per_class >= 1, "synthetic.per_class", self.per_class, "an integer >= 1")
        _require(self.image_size >= 16, "synthetic.image_size", self.image_size, "an integer >= 16")


@dataclass(frozen=True)
class FeatureSetParams:
    """One backbone × weights × cut × input size: one extract stage, one Zarr store.

    ``weights`` left out is the family's default (``imagenet``; ``preset`` for
    ``hub``). ``preset`` and ``blocks`` are for backbone ``hub`` (a keras_hub
    preset, and how many blocks up to the cut have their tokens concatenated);
    its ``cut`` may also be a block index (negative: from the end).
    ``size`` left out is the family's default input size. ``flip: average``
    stores the mean of each image's map and its horizontal mirror's, mirrored
    back (:mod:`pipeline.backbones.flip`): twice the backbone passes.
    """

    backbone: str
    weights: str | None = None
    cut: int | str | None = None
    size: int | None = None
    alpha: float | None = None
    dtype: Literal["float16", "float32"] | None = None  # overrides extract.dtype
    preset: str | None = None
    blocks: int = 1
    flip: Literal["none", "average"] = "none"

    def __post_init__(self):
        if self.weights is None:
            object.__setattr__(self, "weights", default_weights(self.backbone))
        # The key (features.<name>) is put in front of these messages by the loader.
        named = {"imagenet", "none"}
        if self.weights not in named and self.weights.strip().lower() in named:
            raise ParamsError(
                f"weights must be 'imagenet', 'none' or a path to a weights file. Received: "
                f"{self.weights!r} (did you mean {self.weights.strip().lower()!r}?)"
            )
        if not self.weights.strip():
            raise ParamsError("weights must be 'imagenet', 'none' or a path to a weights file. Received: ''")
        if self.size is not None:
            _require(self.size >= 1, "size", self.size, "null (the backbone's default) or an integer >= 1")
        if self.alpha is not None:
            _require(self.alpha > 0, "alpha", self.alpha, "null or a number > 0")


def _default_augment_ops() -> dict[str, float | str]:
    return {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1, "translation": 0.1, "contrast": 0.2}


@dataclass(frozen=True)
class AugmentParams:
    """Augmented views of the training split, cached beside the clean features (stage: augment)."""

    views: int = 0  # K seeded augmented passes; 0: none
    seed: int = 0
    ops: dict[str, float | str] = field(default_factory=_default_augment_ops)
    tta: bool = False  # also compute views of val and test, for test-time augmentation

    def __post_init__(self):
        _require(self.views >= 0, "extract.augment.views", self.views, "an integer >= 0")
        _seed("extract.augment.seed", self.seed)
        _require(len(self.ops) > 0, "extract.augment.ops", self.ops, "at least one op")
        _checked("extract.augment", self)  # op names and factors (pipeline.extraction.augmentation)


@dataclass(frozen=True)
class ExtractParams:
    """How features are computed and stored (stage: extract)."""

    runtime: Literal["auto", "tensorflow", "openvino", "jax"] = "auto"  # auto: OpenVINO on a CPU, JAX on a GPU
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on a CPU, float16 on a GPU
    batch_size: int | Literal["auto"] = "auto"  # auto: measured on a CPU, 128 on a GPU
    dtype: Literal["float16", "float32"] = "float16"
    chunk_mb: float = 8.0  # fewer, larger writes: BENCHMARKS.md
    seed: int = 0
    jit_compile: bool | Literal["auto"] = "auto"  # XLA for the tensorflow runtime; auto: on a GPU only
    augment: AugmentParams = field(default_factory=AugmentParams)
    scheduler: str | None = None  # a Dask scheduler address (else $DASK_SCHEDULER_ADDRESS); null: in-process
    shard_chunks: int = 4  # chunks per task sent to a Dask worker

    def __post_init__(self):
        _seed("extract.seed", self.seed)
        _require(self.shard_chunks >= 1, "extract.shard_chunks", self.shard_chunks, "an integer >= 1")
        if self.batch_size != "auto":
            _require(self.batch_size >= 1, "extract.batch_size", self.batch_size, "'auto' or an integer >= 1")
        _require(self.chunk_mb > 0, "extract.chunk_mb", self.chunk_mb, "a number > 0")


def _default_grids() -> dict[str, Any]:
    return {name: settings() for name, settings in head_kinds().items()}


@dataclass(frozen=True)
class HeadsParams:
    """The grid of heads trained on every feature set (stage: heads).

    Besides the keys below, ``heads.<kind>`` holds the settings of each
    registered head kind (``grids``; also readable as ``heads.<kind>``).
    """

    kinds: tuple[str, ...] = ("logreg", "svm_linear", "svm_rbf", "dense")
    pooling: tuple[Literal[POOLINGS], ...] = ("avg",)
    standardize: tuple[bool, ...] = (True,)  # swept: StandardScaler before the head or not
    pca: tuple[int | float | None, ...] = (None,)  # swept: null, components (int) or variance kept (0-1)
    # selection: "auto" (k-fold CV on train+val when val has fewer than cv_below images of some class, else
    # the val split), 0 (always the val split) or k >= 2 (always k-fold CV on train+val)
    cv: int | Literal["auto"] = "auto"
    cv_folds: int = 5  # k of cv: auto's cross-validation
    cv_below: int = 70  # cv: auto cross-validates below this many val images per class
    # swept: train on the clean features only ("none"), on clean + every cached augmented view as extra
    # rows ("stack"), or (dense heads) on one view per image drawn afresh each epoch ("draw")
    augment: tuple[Literal["none", "stack", "draw"], ...] = ("none",)
    tta: tuple[bool, ...] = (False,)  # swept: average predictions over the cached views
    # feature sets combined from the cache: each entry lists two or more `features` keys whose rows are
    # concatenated (pipeline.heads.combination); trained and selected as one more feature set, "a+b"
    combine: tuple[tuple[str, ...], ...] = ()
    # soft-voting ensemble (stage evaluate): the best head with probabilities of each of the `ensemble`
    # feature sets best on validation, their probabilities averaged; 0 or 1: no ensemble
    ensemble: int = 3
    # soft vote of the near-equals (stage evaluate): the class probabilities of the first `near_equals`
    # variants (with probabilities, on single feature sets, best first) that a paired McNemar test on the
    # scored images cannot tell from the best on validation, within and across feature sets, averaged; one
    # more candidate of the selection, "near-equals/softvote-<n>"; 0 or 1: none
    near_equals: int = 5
    # racing under cross-validation: a variant stops after a fold once a one-sided exact McNemar test on
    # the images scored so far says it is less accurate than the best so far at this level (the values of
    # a C search race each other; dense heads race the best complete variant); 0: off (every fold)
    race: float = 0.05
    # the head kinds fitted on a control feature set (`weights: none`, a random-weights baseline):
    # a cheap, fixed yardstick rather than the whole grid
    control_kinds: tuple[str, ...] = ("logreg",)
    # the values a control kind is fitted at, by setting (C: scikit-learn's default), in place of its grid's
    control_values: dict[str, tuple[float | str, ...]] = field(default_factory=lambda: {"C": (1.0,)})
    seed: int = 0
    n_jobs: int = 2
    backend: Literal["loky", "dask"] = "loky"  # dask: fit the grid on the cluster of `scheduler`
    scheduler: str | None = None  # Dask scheduler address (else $DASK_SCHEDULER_ADDRESS)
    out_of_core: bool | Literal["auto"] = "auto"  # train from the store chunk by chunk (auto: when too big)
    memory_limit_mb: float = 2048.0  # auto: out of core past this many MB of pooled train features
    out_of_core_epochs: int = 5  # passes over the chunks of the SGD heads
    # heads.<kind> for every registered kind (parsed from those keys, not from a "grids" key)
    grids: Mapping[str, Any] = field(default_factory=_default_grids, metadata={"sections": head_kinds})

    def __post_init__(self):
        kinds = list(head_kinds())
        _require(len(self.kinds) > 0, "heads.kinds", self.kinds, f"a non-empty list of {kinds}")
        for index, kind in enumerate(self.kinds):
            if kind not in kinds:
                raise ParamsError(
                    f"heads.kinds[{index}] must be one of {kinds}. Received: {kind!r}" + did_you_mean(kind, kinds)
                )
        _require(len(self.pooling) > 0, "heads.pooling", self.pooling, f"a non-empty list of {POOLINGS}")
        _require(len(self.standardize) > 0, "heads.standardize", self.standardize, "a non-empty list of true/false")
        _require(
            len(self.pca) > 0, "heads.pca", self.pca, "a non-empty list of null, integers >= 1 or numbers in (0, 1)"
        )
        for n in self.pca:
            if isinstance(n, int):
                _require(
                    n >= 1, "heads.pca", n, "null, an integer >= 1 (components) or a number in (0, 1) (variance kept)"
                )
            elif n is not None:
                _require(
                    0.0 < n < 1.0,
                    "heads.pca",
                    n,
                    "null, an integer >= 1 (components) or a number in (0, 1) (variance kept)",
                )
        _require(
            self.cv == "auto" or (isinstance(self.cv, int) and (self.cv == 0 or self.cv >= 2)),
            "heads.cv",
            self.cv,
            "'auto', 0 (select on the val split) or a fold count >= 2",
        )
        _require(self.cv_folds >= 2, "heads.cv_folds", self.cv_folds, "a fold count >= 2")
        _require(self.cv_below >= 1, "heads.cv_below", self.cv_below, "an integer >= 1 (val images per class)")
        _require(self.memory_limit_mb > 0, "heads.memory_limit_mb", self.memory_limit_mb, "a number > 0")
        _require(self.out_of_core_epochs >= 1, "heads.out_of_core_epochs", self.out_of_core_epochs, "an integer >= 1")
        _require(len(self.augment) > 0, "heads.augment", self.augment, "a non-empty list of none, stack, draw")
        _require(len(self.tta) > 0, "heads.tta", self.tta, "a non-empty list of true/false")
        if self.cv not in (0, "auto") and (set(self.augment) != {"none"} or any(self.tta)):
            raise ParamsError(
                f"heads.augment / heads.tta need heads.cv: 0 (augmented views exist for train, and "
                f"for val/test only with TTA, not for folds of train+val). Received: cv={self.cv}, "
                f"augment={list(self.augment)}, tta={list(self.tta)}"
            )
        if "draw" in self.augment and "dense" not in self.kinds:
            raise ParamsError(
                "heads.augment 'draw' (one view per image per epoch) applies to dense heads only; "
                f"heads.kinds has none. Received: kinds={list(self.kinds)}"
            )
        for index, members in enumerate(self.combine):
            _require(
                len(members) >= 2 and len(set(members)) == len(members),
                f"heads.combine[{index}]",
                list(members),
                "a list of two or more different feature sets",
            )
        _require(self.ensemble >= 0, "heads.ensemble", self.ensemble, "an integer >= 0 (members; 0 or 1: none)")
        _require(
            self.near_equals >= 0, "heads.near_equals", self.near_equals, "an integer >= 0 (members; 0 or 1: none)"
        )
        _require(
            0.0 <= self.race < 1.0, "heads.race", self.race, "a significance level in [0, 1) (0: no racing; e.g. 0.05)"
        )
        _require(
            len(self.control_kinds) > 0,
            "heads.control_kinds",
            self.control_kinds,
            f"a non-empty list of {kinds}",
        )
        for index, kind in enumerate(self.control_kinds):
            if kind not in kinds:
                raise ParamsError(
                    f"heads.control_kinds[{index}] must be one of {kinds}. Received: {kind!r}"
                    + did_you_mean(kind, kinds)
                )
        self._check_control_values(kinds)
        _require(self.n_jobs != 0, "heads.n_jobs", self.n_jobs, "a non-zero integer (-1: one worker per core)")
        _seed("heads.seed", self.seed)

    def _check_control_values(self, kinds: list[str]) -> None:
        settable = {f.name for kind in self.control_kinds for f in dataclasses.fields(head_kinds()[kind])}
        for name, values in self.control_values.items():
            if name not in settable:
                raise ParamsError(
                    f"heads.control_values.{name} is not a setting of heads.control_kinds "
                    f"{list(self.control_kinds)}: they have {sorted(settable)}" + did_you_mean(name, settable)
                )
            _require(len(values) > 0, f"heads.control_values.{name}", list(values), "a non-empty list")
            for kind in self.control_kinds:
                settings = self.grids.get(kind, head_kinds()[kind]())
                if name in {f.name for f in dataclasses.fields(settings)}:
                    try:  # the kind's own checks, naming its key
                        dataclasses.replace(settings, **{name: tuple(values)})
                    except ValueError as error:
                        raise ParamsError(f"heads.control_values.{name}: {error}") from None

    def grid(self, kind: str) -> Any:
        """The settings of head kind ``kind`` (``heads.<kind>``)."""
        if kind not in self.grids:
            raise ParamsError(f"no settings for head kind {kind!r}. Valid kinds: {list(self.grids)}")
        return self.grids[kind]

    def __getattr__(self, name: str) -> Any:
        # heads.logreg, heads.dense, ...: the kind's settings. Only reached when normal lookup fails.
        grids = self.__dict__.get("grids")
        if grids is not None and name in grids:
            return grids[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


@dataclass(frozen=True)
class EvaluateParams:
    """How the best head is chosen and reported (stage: evaluate)."""

    select_by: Literal["accuracy", "macro_f1"] = "accuracy"
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        _require(
            self.bootstrap >= 1,
            "evaluate.bootstrap",
            self.bootstrap,
            "an integer >= 1 (resamples of the test split for the 95% interval; 1000 is usual)",
        )
        _seed("evaluate.seed", self.seed)


@dataclass(frozen=True)
class FinetuneParams:
    """Warm-started fine-tuning of the best dense head with the top of its backbone (stage: finetune)."""

    feature_set: str | None = None  # null: the stage is off
    unfreeze: int = 20  # top layers of the truncated backbone trained (BatchNorm stays frozen)
    learning_rate: float = 1e-5
    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    augment: bool = True  # train on views made with extract.augment.ops
    seed: int = 0

    def __post_init__(self):
        _require(self.unfreeze >= 0, "finetune.unfreeze", self.unfreeze, "an integer >= 0")
        _require(self.learning_rate > 0, "finetune.learning_rate", self.learning_rate, "a number > 0")
        _require(self.epochs >= 1, "finetune.epochs", self.epochs, "an integer >= 1")
        _require(self.patience >= 0, "finetune.patience", self.patience, "an integer >= 0")
        _require(self.batch_size >= 1, "finetune.batch_size", self.batch_size, "an integer >= 1")
        _seed("finetune.seed", self.seed)


@dataclass(frozen=True)
class ExportParams:
    """The deployable model (stage: export)."""

    variant: str | None = None  # null: the best on validation; else "<feature set>/<variant id>"
    tolerance: float = 0.002  # largest probability difference allowed against the pipeline on test
    ood_k: int = 5  # out of domain: distance to the k-th nearest training image (pipeline.export.ood)
    ood_percentile: float = 95.0  # ... beyond this percentile of the validation images' distances

    def __post_init__(self):
        _require(0 < self.tolerance < 1, "export.tolerance", self.tolerance, "a number in (0, 1)")
        _require(isinstance(self.ood_k, int) and self.ood_k >= 1, "export.ood_k", self.ood_k, "an integer >= 1")
        _require(
            50 <= self.ood_percentile <= 100, "export.ood_percentile", self.ood_percentile, "a number from 50 to 100"
        )
        if self.variant is not None and "/" not in self.variant:
            raise ParamsError(
                f"export.variant must be null or '<feature set>/<variant id>'. Received: {self.variant!r}"
            )


@dataclass(frozen=True)
class DiagnoseParams:
    """The pictures: learning curves, error gallery, label issues, maps (stage: diagnose)."""

    curve_per_class: tuple[int, ...] = (1, 2, 5, 10, 20, 50)  # training images per class of each point (+ all)
    curve_draws: int = 3  # random draws of the training images per point
    label_folds: int = 5  # cross-validation folds on train+val for the label-issue ranking
    gallery: int = 32  # most thumbnails in each list (errors, least confident, label issues)
    map_max_iter: int = 500  # t-SNE iterations of each feature set's map
    thumb_px: int = 96  # thumbnail side
    seed: int = 0

    def __post_init__(self):
        _require(
            len(self.curve_per_class) > 0 and all(n >= 1 for n in self.curve_per_class),
            "diagnose.curve_per_class",
            list(self.curve_per_class),
            "a list of integers >= 1",
        )
        _require(self.curve_draws >= 1, "diagnose.curve_draws", self.curve_draws, "an integer >= 1")
        _require(self.label_folds >= 2, "diagnose.label_folds", self.label_folds, "an integer >= 2")
        _require(self.gallery >= 1, "diagnose.gallery", self.gallery, "an integer >= 1")
        _require(
            self.map_max_iter >= 250,
            "diagnose.map_max_iter",
            self.map_max_iter,
            "an integer >= 250 (scikit-learn's TSNE minimum)",
        )
        _require(16 <= self.thumb_px <= 512, "diagnose.thumb_px", self.thumb_px, "an integer from 16 to 512")
        _seed("diagnose.seed", self.seed)


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    # A params file must define at least one: an empty section would leave every later stage nothing to do
    # and make the heads stage remove the heads of every feature set (the loader refuses it, see "non_empty").
    features: dict[str, FeatureSetParams] = field(
        default_factory=dict, metadata={"non_empty": "at least one feature set (backbone, weights, cut)"}
    )
    heads: HeadsParams = field(default_factory=HeadsParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    export: ExportParams = field(default_factory=ExportParams)
    diagnose: DiagnoseParams = field(default_factory=DiagnoseParams)

    def __post_init__(self):
        if self.export.variant is not None and self.export.variant.split("/")[0] not in self.features:
            raise ParamsError(
                f"export.variant names no feature set. Received: {self.export.variant!r}. "
                + suggest(self.export.variant.split("/")[0], self.features)
            )
        chosen = self.finetune.feature_set
        if chosen is not None and chosen not in self.features:
            raise ParamsError(
                f"finetune.feature_set names no feature set. Received: {chosen!r}. " + suggest(chosen, self.features)
            )
        if chosen is not None and self.features[chosen].flip != "none":
            # Fine-tuning unfreezes the backbone's top layers, which a flip-averaged model wraps twice over.
            raise ParamsError(
                f"finetune.feature_set {chosen!r} has flip: {self.features[chosen].flip}, which fine-tuning does not "
                "support; choose a feature set with flip: none"
            )
        for index, members in enumerate(self.heads.combine):
            for name in members:
                if name not in self.features:
                    raise ParamsError(
                        f"heads.combine[{index}] names no feature set. Received: {name!r}. "
                        + suggest(name, self.features)
                    )
        for key in self.features:
            if not _FEATURE_SET_KEY.match(key):
                raise ParamsError(
                    f"features: {key!r} is not a usable feature-set name; use letters, digits, "
                    "'_', '-' and '.', starting with a letter or digit"
                )


# --------------------------------------------------------------------------- messages


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ParamsError(f"{key} must be {expected}. Received: {value!r}")


def _checked(section: str, value: Any) -> None:
    try:
        run_checks(section, value)
    except ValueError as error:
        raise ParamsError(str(error)) from None


def _seed(key: str, value: int) -> None:
    _require(0 <= value <= MAX_SEED, key, value, f"an integer from 0 to {MAX_SEED} (2**32 - 1)")


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def did_you_mean(value: Any, choices: Any) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def suggest(key: str, allowed: Any) -> str:
    allowed = sorted(str(a) for a in allowed)
    close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}Allowed: {', '.join(allowed) if allowed else '(none defined)'}"
