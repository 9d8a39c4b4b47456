"""What the heads stage does for each feature set, decided once before any head is fitted (the heads plan).

:func:`plan_feature_set` resolves ``params.heads`` against one feature set —
its store's metadata (row shape, weights), the manifest and the previous
``scores.json`` — into a frozen :class:`HeadsPlan`: which variants apply (and
whether the feature set is a control, which gets a cheap fixed grid), whether
it trains out of core, how variants are compared (the val split or k folds,
:func:`~pipeline.heads.sweep.resolve_cv`), and, from the fingerprints, which
jobs are fitted and which rows are reused as they are. The fitting code
(:mod:`pipeline.heads.training`, :mod:`pipeline.heads.sweep`) takes the plan
and the rows it reads, and decides nothing of this again.

Reuse: a variant whose fingerprint — the sha256 of its estimator settings,
the bytes of the pooled train and val features, the source of this package's
modules and the library versions — equals the one recorded in the previous
``scores.json``, and whose ``.joblib`` file is there with the recorded
sha256, is kept as it is. Warm-started paths and searches are kept or
refitted whole; dense heads trained together keep a fingerprint each, and only
those that changed are refitted, together. A variant stopped by racing was
compared with the best of the others: when any other job of its feature set
is refitted, it races again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import HeadsParams
from pipeline.heads.combination import combination_key, concatenate
from pipeline.heads.registry import head_kind
from pipeline.heads.saved import head_file
from pipeline.heads.sweep import FitJob, Splits, plan_jobs, resolve_cv
from pipeline.heads.variants import Variant, expand_grid, make_head, make_preprocessor
from pipeline.manifest import Record
from pipeline.provenance import features_identity, file_sha256, library_versions
from pipeline.store.layout import views_path
from pipeline.store.pooling import applicable, applies, pooled_width
from pipeline.store.reader import FeatureSet, open_store, open_views, read_pooled

log = logging.getLogger(__name__)
SCORES_FILE = "scores.json"
# The libraries whose versions decide what a fit gives: part of every fingerprint.
FIT_LIBRARIES = ("scikit-learn", "numpy", "keras", "joblib", "jax", "jaxlib")
_PACKAGE = Path(__file__).parent


@dataclass(frozen=True)
class HeadsPlan:
    """One feature set's part of the heads stage, resolved from params, store metadata and earlier results.

    Attributes
    ----------
    name : str
        The feature set (or combination) key: ``heads/<name>/``.
    stores : tuple of Path
        Its store, or a combination's member stores.
    out : Path
        Folder of its fitted heads and ``scores.json``.
    variants : tuple of Variant
        Every variant of its grid (those that apply; a control's fixed grid).
    heads : HeadsParams
        The settings the fits use: ``cv`` resolved to a fold count (0: the val
        split), a control's kinds without their search.
    selection : str
        How variants are compared, in words for the reports.
    control : bool
        A random-weights yardstick beside pretrained feature sets.
    out_of_core : bool
        Trained from the store chunk by chunk (no reuse, no racing).
    jobs : tuple of FitJob
        What is fitted now.
    reused : mapping of str to dict
        Score rows kept as they are, by variant id.
    fingerprints : mapping
        The fingerprint of each variant fitted now (by Variant), and of each
        search (by ``(kind, features key)``: its values are found as it runs).
    """

    name: str
    stores: tuple[Path, ...]
    out: Path
    variants: tuple[Variant, ...]
    heads: HeadsParams
    selection: str = ""
    control: bool = False
    out_of_core: bool = False
    jobs: tuple[FitJob, ...] = ()
    reused: Mapping[str, dict] = field(default_factory=dict)
    fingerprints: Mapping[Any, str] = field(default_factory=dict)

    @property
    def combines(self) -> list[str] | None:
        """The member feature sets of a combination, None for one store."""
        return [Path(s).stem for s in self.stores] if len(self.stores) > 1 else None

    @property
    def n_fit(self) -> int:
        return sum(len(job.variants) for job in self.jobs)


def plan_feature_set(
    stores: Sequence[Path],
    heads: HeadsParams,
    out: Path,
    records: Sequence[Record],
    *,
    reuse: bool = True,
    control: bool = False,
    reads: PooledReads | None = None,
) -> tuple[HeadsPlan, dict[str, Splits]]:
    """Resolve one feature set's grid, read its train and val rows, and decide what to fit.

    Parameters
    ----------
    stores : sequence of Path
        The feature store, or the member stores of a combination (their rows
        concatenated: :mod:`pipeline.heads.combination`).
    heads : HeadsParams
    out : Path
        Folder of its fitted heads; earlier results in it are reused when their
        fingerprints match (unless ``reuse`` is false).
    records : sequence of Record
        The manifest (train and val images, labels).
    control : bool
        The store is a control feature set (:func:`control_variants`).
    reads : PooledReads, optional
        The rows read by the plans of this run so far (a combination takes its
        members' rows from there); default: read here.

    Returns
    -------
    plan : HeadsPlan
    data : dict of str to Splits
        The train and val rows of each pooling the variants read (empty when
        the plan trains out of core: those are read chunk by chunk).
    """
    stores = tuple(Path(s) for s in stores)
    name = stores[0].stem if len(stores) == 1 else combination_key([s.stem for s in stores])
    variants = expand_grid(heads)
    for store in stores:
        variants = applicable_variants(store, variants)
    if len(stores) > 1:
        dropped = sorted({v.id for v in variants if v.uses_views})
        if dropped:
            log.info("%s: augmented views are not combined; leaving out %d variants that read them", name, len(dropped))
        variants = [v for v in variants if not v.uses_views]
        if not variants:
            raise ValueError(
                f"heads.combine {[s.stem for s in stores]}: no variant of the grid applies to every "
                "member without views"
            )
    if control:
        variants, heads = control_variants(name, variants, heads)
    base = HeadsPlan(name, stores, Path(out), tuple(variants), heads, control=control)
    if len(stores) == 1 and out_of_core(stores[0], variants, heads, records):
        return dataclasses.replace(base, out_of_core=True, selection="val split (out of core)"), {}
    data = read_rows(stores, variants, records, reads or PooledReads())
    return decide_fits(base, data, reuse=reuse), data


class PooledReads:
    """Train and val rows of stores under poolings, each store read once for the heads stage's plans.

    A combination (``heads.combine``) concatenates its members' rows: those
    its members' own plans read already, not the stores read again (once per
    split, as :func:`~pipeline.heads.combination.open_combination` does).
    Every call must pass the same manifest.
    """

    def __init__(self):
        self._read: dict[tuple[Path, str], dict[str, FeatureSet]] = {}

    def get(self, store: Path, poolings: Sequence[str], records: Sequence[Record]) -> dict[str, dict[str, FeatureSet]]:
        """``result[split][pooling]`` for train and val, as :func:`~pipeline.store.reader.read_pooled` gives."""
        store = Path(store)
        missing = [pooling for pooling in poolings if (store, pooling) not in self._read]
        if missing:
            read = read_pooled(store, ("train", "val"), poolings=missing, manifest=records)
            self._read.update({(store, pooling): {s: read[s][pooling] for s in read} for pooling in missing})
        return {
            split: {pooling: self._read[store, pooling][split] for pooling in poolings} for split in ("train", "val")
        }


def read_rows(
    stores: Sequence[Path], variants: Sequence[Variant], records: Sequence[Record], reads: PooledReads
) -> dict[str, Splits]:
    """The train and val rows of each pooling the variants read (views too where they read them)."""
    poolings = sorted({v.pooling for v in variants})
    if len(stores) > 1:
        names = [Path(s).stem for s in stores]
        members = [reads.get(store, poolings, records) for store in stores]
        data = {}
        for pooling in poolings:
            train, val = (concatenate([m[split][pooling] for m in members], names) for split in ("train", "val"))
            data[pooling] = Splits(train.X, train.y, val.X, val.y)
            log.info("%s pooling=%s: train X %s, val X %s", combination_key(names), pooling, train.X.shape, val.X.shape)
        return data
    features = stores[0]
    needs_views = any(v.uses_views for v in variants)
    return read_splits(
        features,
        poolings,
        records,
        views=views_path(features.parent, features.stem) if needs_views else None,
        val_views=any(v.tta for v in variants),
        reads=reads,
    )


def decide_fits(plan: HeadsPlan, data: dict[str, Splits], *, reuse: bool = True) -> HeadsPlan:
    """The plan with its selection mode, its jobs to fit, its reused rows and their fingerprints."""
    variants, heads, name = plan.variants, plan.heads, plan.name
    folds, mode = resolve_cv(heads, data[variants[0].pooling], uses_views=any(v.uses_views for v in variants))
    heads = dataclasses.replace(heads, cv=folds)
    log.info("%s: selection by %s", name, mode)
    if not len(data[variants[0].pooling].y_val) and heads.cv == 0:
        log.warning(
            "%s has no validation images: variants cannot be compared (set data.split.val > 0 or heads.cv >= 2)", name
        )
    digests = {pooling: data_digest(splits) for pooling, splits in data.items()}
    old = previous_rows(plan.out) if reuse else {}
    planned = plan_jobs(variants, heads)
    # A batch's variants keep fingerprints of their own (each is trained as it would be alone):
    # only those that changed are refitted, as a smaller batch.
    each = {
        v: job_fingerprint(FitJob(job.kind, (v,)), heads, digests[v.pooling])
        for job in planned
        if job.together
        for v in job.variants
    }
    whole = {job: job_fingerprint(job, heads, digests[job.variants[0].pooling]) for job in planned if not job.together}

    def unchanged(job: FitJob) -> list[bool]:
        return [old.get(v.id, {}).get("fingerprint") == (each[v] if job.together else whole[job]) for v in job.variants]

    others_change = any(not all(unchanged(job)) for job in planned)

    def raced_again(variant: Variant) -> bool:
        # Raced against the feature set's best complete variant (the kinds fitted together: dense), which
        # may change when any job is refitted; a search's values race each other, within their own job.
        return (
            others_change
            and head_kind(variant.kind).fit_together is not None
            and bool(old[variant.id].get("raced_out"))
        )

    rows: dict[str, dict] = {}
    to_fit: list[FitJob] = []
    fingerprints: dict[Any, str] = {}
    for job in planned:
        if job.together:
            changed = tuple(v for v, same in zip(job.variants, unchanged(job)) if not same or raced_again(v))
            rows.update({v.id: _reused(old[v.id], mode) for v in job.variants if v not in changed})
            if changed:
                to_fit.append(dataclasses.replace(job, variants=changed, together=len(changed) > 1))
                fingerprints.update({v: each[v] for v in changed})
        elif all(unchanged(job)) and not any(raced_again(v) for v in job.variants):
            # A search also keeps the values its bisection added (same fingerprint).
            rows.update({i: _reused(row, mode) for i, row in old.items() if row["fingerprint"] == whole[job]})
        else:
            to_fit.append(job)
            if job.search is not None:
                fingerprints[(job.kind, job.features_key)] = whole[job]
            fingerprints.update({v: whole[job] for v in job.variants})
    plan = dataclasses.replace(
        plan, heads=heads, selection=mode, jobs=tuple(to_fit), reused=rows, fingerprints=fingerprints
    )
    log.info("%s: %d variants, %d to fit, %d reused", name, len(variants), plan.n_fit, len(variants) - plan.n_fit)
    return plan


def _reused(row: dict, mode: str) -> dict:
    # A reused row takes this run's `selection` words: they name heads.cv_below, which fingerprints lack.
    return {**row, "reused": True, "selection": mode}


def read_splits(
    features: Path,
    poolings: Sequence[str],
    records: Sequence[Record],
    *,
    views: Path | None = None,
    val_views: bool = False,
    reads: PooledReads | None = None,
) -> dict[str, Splits]:
    """The train and val rows of a store for each pooling (the store read once, pooled as read).

    Parameters
    ----------
    records : sequence of Record
        The manifest: which images are train and val, with their labels.
    views : Path, optional
        The feature set's views store (:func:`pipeline.store.views_path`): its
        training views are read too (and its val views with ``val_views``).
    reads : PooledReads, optional
        Keeps the rows read for a combination of this store (default: read here).

    Raises
    ------
    ValueError
        If views are asked for but the store has none, was made from other
        features, or lacks val views.
    """
    data = {}
    read = (reads or PooledReads()).get(features, poolings, records)
    for pooling in poolings:
        train, val = read["train"][pooling], read["val"][pooling]
        train_views = val_views_X = None
        if views is not None:
            train_views, val_views_X = _read_views(views, pooling, records, open_store(features), val_views)
        data[pooling] = Splits(train.X, train.y, val.X, val.y, train_views, val_views_X)
        log.info(
            "%s pooling=%s: train X %s, val X %s%s",
            features.name,
            pooling,
            train.X.shape,
            val.X.shape,
            "" if train_views is None else f", train views {train_views.shape}",
        )
    return data


def _read_views(views: Path, pooling: str, records: Sequence[Record], store, val_views: bool):
    # The views must extend this very store's features: same identity but for the augmentation.
    expect = features_identity(store.attrs["identity"])
    train = open_views(views, "train", manifest=records, pooling=pooling, expect=expect)
    val = open_views(views, "val", manifest=records, pooling=pooling, expect=expect).X if val_views else None
    return train.X, val


def data_digest(splits: Splits) -> str:
    """sha256 of the arrays a fit sees (values, shapes and dtypes)."""
    digest = hashlib.sha256()
    arrays = [splits.X_train, splits.y_train, splits.X_val, splits.y_val]
    arrays += [a for a in (splits.X_train_views, splits.X_val_views) if a is not None]
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        if array.size:  # memoryview cannot cast an empty array (no validation images)
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def fit_code_digest() -> str:
    """sha256 of the source of every module of this package (the code that decides what a fit gives)."""
    return hashlib.sha256(b"".join(path.read_bytes() for path in sorted(_PACKAGE.glob("*.py")))).hexdigest()


def job_fingerprint(job: FitJob, heads: HeadsParams, data_sha: str) -> str:
    """What a job's results depend on; equal fingerprints mean the same fits (see the module docstring).

    ``data_sha`` covers the features and the labels of train and val, so a
    relabelled or re-split image changes it."""
    code = fit_code_digest()
    preprocessor = make_preprocessor(job.variants[0], heads)
    versions = library_versions(FIT_LIBRARIES)
    recipe = {
        "variants": [v.id for v in job.variants],
        "heads": [sorted(make_head(v, heads).get_params().items()) for v in job.variants],
        "preprocessing": None if preprocessor is None else sorted(preprocessor.get_params().items()),
        "cv": heads.cv,
        "seed": heads.seed,
        "race": heads.race,
        "data": data_sha,
        "code": code,
        "versions": {name: versions.get(name) for name in FIT_LIBRARIES},
    }
    return hashlib.sha256(json.dumps(recipe, default=repr, sort_keys=True).encode()).hexdigest()[:20]


def previous_rows(out: Path) -> dict[str, dict]:
    """The rows of an earlier ``scores.json`` in ``out`` by variant id, when its file is there, as written.

    A row of a variant stopped by racing has no file (no fitted head) and is kept by its fingerprint alone.
    """
    path = out / SCORES_FILE
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["variants"]
    except (ValueError, KeyError) as error:
        log.warning("ignoring unreadable %s (%s); refitting everything", path, error)
        return {}
    kept = {}
    for row in rows:
        path = head_file(out, row["variant"])
        if "fingerprint" in row and row.get("raced_out"):
            kept[row["variant"]] = row
            continue
        if "fingerprint" not in row or not path.is_file():
            continue
        if row.get("sha256") != file_sha256(path):
            log.warning(
                "%s is not the file the heads stage wrote (sha256 differs from %s): refitting it", path, SCORES_FILE
            )
            continue
        kept[row["variant"]] = row
    return kept


def control_feature_sets(features: Mapping[str, Any]) -> set[str]:
    """The feature sets of params' ``features`` that are controls: random weights beside pretrained ones.

    A backbone with ``weights: none`` is a yardstick of what pretrained weights
    add when some other feature set has them; when none has, it is the
    experiment itself and gets the whole grid.
    """
    random = {key for key, spec in features.items() if spec.weights == "none"}
    return random if len(random) < len(features) else set()


def control_variants(name: str, variants: Sequence[Variant], heads: HeadsParams) -> tuple[list[Variant], HeadsParams]:
    """The variants fitted on a control feature set and their settings: a cheap, fixed grid.

    A control feature set (``weights: none``: the backbone with random weights)
    is a yardstick of what the pretrained weights add, not a candidate: only the
    kinds of ``heads.control_kinds`` are fitted on it, each setting named in
    ``heads.control_values`` at those values instead of its grid's (by default
    logistic regression at C = 1, scikit-learn's default), and no
    coarse-to-fine search.

    Raises
    ------
    ValueError
        If no variant of the grid is of a control kind.
    """
    kept = [v for v in variants if v.kind in heads.control_kinds]
    if not kept:
        raise ValueError(
            f"{name} is a control feature set (weights: none): only heads.control_kinds "
            f"{list(heads.control_kinds)} are fitted on it, and heads.kinds {list(heads.kinds)} has none "
            "of them; add one to heads.kinds or to heads.control_kinds"
        )
    grids = {}
    for kind, grid in heads.grids.items():
        fields = {f.name for f in dataclasses.fields(grid)}
        fixed = {n: tuple(values) for n, values in heads.control_values.items() if n in fields}
        if kind in heads.control_kinds:
            grid = dataclasses.replace(grid, **fixed)
        grids[kind] = dataclasses.replace(grid, refine=0) if "refine" in fields else grid
    settings = dataclasses.replace(heads, grids=grids)
    inputs = {(v.kind, v.features_key) for v in kept}
    fixed_variants = [v for v in expand_grid(settings) if (v.kind, v.features_key) in inputs]
    log.info(
        "%s: a control feature set (weights: none): fitting %s only (heads.control_kinds) at %s "
        "(heads.control_values), %d variant%s",
        name,
        ", ".join(heads.control_kinds),
        ", ".join(f"{n} {list(values)}" for n, values in heads.control_values.items()),
        len(fixed_variants),
        "" if len(fixed_variants) == 1 else "s",
    )
    return fixed_variants, settings


def applicable_variants(features: Path, variants: Sequence[Variant]) -> list[Variant]:
    """The variants whose pooling applies to the store's rows (map poolings to maps, token poolings to tokens).

    ``heads.pooling`` is one list for every feature set; those of another kind are left out here, logged.

    Raises
    ------
    ValueError
        If none applies, naming the poolings that would.
    """
    shape = tuple(open_store(features).attrs["feature_shape"])
    kept = [v for v in variants if applies(v.pooling, shape)]
    left_out = sorted({v.pooling for v in variants} - {v.pooling for v in kept})
    if not kept:
        raise ValueError(
            f"{features}: none of heads.pooling {sorted({v.pooling for v in variants})} applies to its "
            f"rows of shape {shape}; add one of {list(applicable(shape))} to heads.pooling"
        )
    if left_out:
        log.info(
            "%s: pooling %s does not apply to rows of shape %s; its variants are left out here",
            features.stem,
            ", ".join(left_out),
            shape,
        )
    return kept


def out_of_core(features: Path, variants: Sequence[Variant], heads: HeadsParams, records: Sequence[Record]) -> bool:
    """Whether to train from the store chunk by chunk: forced, or (auto) when the pooled train features are too big."""
    if heads.out_of_core != "auto":
        return bool(heads.out_of_core)
    n_train = sum(r.split == "train" for r in records)
    largest = max(pooled_bytes(features, pooling, n_train) for pooling in {v.pooling for v in variants})
    if largest > heads.memory_limit_mb * 2**20:
        log.info(
            "%s: pooled train features take %.0f MB, more than heads.memory_limit_mb=%g: training out of core",
            features.stem,
            largest / 2**20,
            heads.memory_limit_mb,
        )
        return True
    return False


def pooled_bytes(features, pooling: str, rows: int) -> int:
    """Bytes ``rows`` pooled float32 feature rows would take in memory, from the store's metadata."""
    group = open_store(features)
    return int(rows * pooled_width(tuple(group.attrs["feature_shape"]), pooling) * 4)
