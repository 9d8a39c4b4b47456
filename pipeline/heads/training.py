"""Training the heads grid on one feature store: what changed only, in memory or out of core (the heads stage's core).

:func:`write_scores` fits the grid (:func:`pipeline.heads.variants.expand_grid`)
on a store's train split, scores it on val (or by cross-validation,
``heads.cv``), saves every fitted head (``<variant>.joblib``: [standardize] →
[pca] → head) and writes ``scores.json`` with each variant's validation
accuracy and macro-F1, fit seconds, peak memory, fingerprint and the sha256 of
its file (which later stages check before loading it:
:mod:`pipeline.heads.saved`), the sweep's wall time, and the store's
provenance. The test split is not read here.

Only what changed is refitted. A variant whose fingerprint — the sha256 of its
estimator settings, the bytes of the pooled train and val features, the source
of this package's modules and the library versions — equals the one recorded
in the previous ``scores.json``, and whose ``.joblib`` file is there with the
recorded sha256, is kept as it is (``"reused": true``). Warm-started paths are kept or refitted whole;
of dense heads trained together in one pass (:mod:`pipeline.heads.dense_batch`) each keeps a
fingerprint of its own, since each is trained as it would be alone, and only those that changed are
refitted, together.
Files of variants no longer in the grid are removed, so the folder always holds
exactly the grid.

When the pooled training features exceed ``heads.memory_limit_mb`` (or
``heads.out_of_core: true``), the grid is trained from dask arrays instead,
one block in memory at a time, by each kind's streaming form (:mod:`pipeline.heads.chunked`)
(kinds without one, PCA and views are skipped and listed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import joblib
import numpy as np

from pipeline.config import HeadsParams, dask_address
from pipeline.heads.combination import combination_key, combined_provenance, open_combination
from pipeline.heads.chunked import fit_out_of_core
from pipeline.heads.registry import head_kind
from pipeline.heads.saved import head_file, save_head
from pipeline.heads.sweep import FitJob, Splits, plan_jobs, resolve_cv, run_sweep
from pipeline.heads.variants import Variant, expand_grid, make_head, make_preprocessor
from pipeline.manifest import Record
from pipeline.provenance import features_identity, file_sha256, library_versions
from pipeline.store.layout import views_path
from pipeline.store.reader import open_store, open_views, provenance_of, read_pooled
from pipeline.store.pooling import applicable, applies, pooled_width

log = logging.getLogger(__name__)
SCORES_FILE = "scores.json"
VAL_PROBA_FILE = "val_proba.npz"
# The labels of the scored images (val, or train+val in fold order) in VAL_PROBA_FILE; not a variant id.
SCORED_LABELS = "_labels"
# The libraries whose versions decide what a fit gives: part of every fingerprint.
FIT_LIBRARIES = ("scikit-learn", "numpy", "keras", "joblib")
_PACKAGE = Path(__file__).parent


def read_splits(features: Path, poolings: Sequence[str], records: Sequence[Record], *,
                views: Optional[Path] = None, val_views: bool = False) -> dict[str, Splits]:
    """The train and val rows of a store for each pooling (the store read once, pooled as read).

    Parameters
    ----------
    records : sequence of Record
        The manifest: which images are train and val, with their labels.
    views : Path, optional
        The feature set's views store (:func:`pipeline.store.views_path`): its
        training views are read too (and its val views with ``val_views``).

    Raises
    ------
    ValueError
        If views are asked for but the store has none, was made from other
        features, or lacks val views.
    """
    data = {}
    read = read_pooled(features, ("train", "val"), poolings=poolings, manifest=records)
    for pooling in poolings:
        train, val = read["train"][pooling], read["val"][pooling]
        train_views = val_views_X = None
        if views is not None:
            train_views, val_views_X = _read_views(views, pooling, records, open_store(features), val_views)
        data[pooling] = Splits(train.X, train.y, val.X, val.y, train_views, val_views_X)
        log.info("%s pooling=%s: train X %s, val X %s%s", features.name, pooling, train.X.shape, val.X.shape,
                 "" if train_views is None else f", train views {train_views.shape}")
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
        if array.size:   # memoryview cannot cast an empty array (no validation images)
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
        "cv": heads.cv, "seed": heads.seed, "data": data_sha, "code": code,
        "versions": {name: versions.get(name) for name in FIT_LIBRARIES},
    }
    return hashlib.sha256(json.dumps(recipe, default=repr, sort_keys=True).encode()).hexdigest()[:20]


def read_val_proba(out: Path) -> dict[str, np.ndarray]:
    """Each variant's class probabilities on the images it was scored on (val, or train+val out of fold).

    Written by the heads stage beside ``scores.json`` for the kinds that give
    probabilities, rows in the order of ``val_correct``: what soft voting
    across feature sets is scored with (:mod:`pipeline.selection.ensemble`).
    """
    path = out / VAL_PROBA_FILE
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def previous_rows(out: Path) -> dict[str, dict]:
    """The rows of an earlier ``scores.json`` in ``out`` by variant id, when its file is there, as written."""
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
            kept[row["variant"]] = row      # stopped by racing: scores only, no fitted head
            continue
        if "fingerprint" not in row or not path.is_file():
            continue
        if row.get("sha256") != file_sha256(path):
            log.warning("%s is not the file the heads stage wrote (sha256 differs from %s): refitting it", path,
                        SCORES_FILE)
            continue
        kept[row["variant"]] = row
    return kept


def train_heads(features: Union[Path, Sequence[Path]], heads: HeadsParams, out: Path, records: Sequence[Record], *, progress: bool = True,
                reuse: bool = True, control: bool = False) -> tuple[list[dict], dict]:
    """Fit the grid on one store (what changed only), save every fitted head.

    Parameters
    ----------
    features : Path or sequence of Path
        The feature store, or the member stores of a combination (``heads.combine``),
        whose rows are concatenated (:mod:`pipeline.heads.combination`).
    heads : HeadsParams
    records : sequence of Record
        The manifest (train and val images, labels).
    out : Path
        Folder of the fitted heads; earlier results in it are reused when their
        fingerprints match (unless ``reuse`` is false).
    control : bool
        The store is a control feature set (:func:`control_variants`): a cheap, fixed grid.

    Returns
    -------
    rows : list of dict
        One score row per variant, in grid order.
    summary : dict
        ``variants``, ``fitted``, ``reused`` and ``fit_wall_seconds`` (the sweep's wall time).
    """
    if not isinstance(features, (str, Path)):
        return _train_combination(list(features), heads, out, records, progress=progress, reuse=reuse)
    variants = applicable_variants(features, expand_grid(heads))
    if control:
        variants, heads = control_variants(features.stem, variants, heads)
    if out_of_core(features, variants, heads, records):
        return _train_out_of_core(features, variants, heads, out, records)
    needs_views = any(v.uses_views for v in variants)
    data = read_splits(features, sorted({v.pooling for v in variants}), records,
                       views=views_path(features.parent, features.stem) if needs_views else None,
                       val_views=any(v.tta for v in variants))
    return _fit_grid(features.stem, variants, data, heads, out, progress=progress, reuse=reuse)


def _train_combination(stores: Sequence[Path], heads: HeadsParams, out: Path, records: Sequence[Record], *,
                       progress: bool, reuse: bool) -> tuple[list[dict], dict]:
    """The grid on a combination's concatenated rows (:mod:`pipeline.heads.combination`), in memory, without views."""
    names = [Path(store).stem for store in stores]
    key = combination_key(names)
    variants = expand_grid(heads)
    for store in stores:
        variants = applicable_variants(store, variants)
    dropped = sorted({v.id for v in variants if v.uses_views})
    if dropped:
        log.info("%s: augmented views are not combined; leaving out %d variants that read them", key, len(dropped))
    variants = [v for v in variants if not v.uses_views]
    if not variants:
        raise ValueError(f"heads.combine {names}: no variant of the grid applies to every member without views")
    data = {}
    for pooling in sorted({v.pooling for v in variants}):
        train, val = (open_combination(stores, names, split, manifest=records, pooling=pooling)
                      for split in ("train", "val"))
        data[pooling] = Splits(train.X, train.y, val.X, val.y)
        log.info("%s pooling=%s: train X %s, val X %s", key, pooling, train.X.shape, val.X.shape)
    return _fit_grid(key, variants, data, heads, out, progress=progress, reuse=reuse)


def _fit_grid(name: str, variants: Sequence[Variant], data: dict[str, Splits], heads: HeadsParams, out: Path, *,
              progress: bool, reuse: bool) -> tuple[list[dict], dict]:
    """Select the mode, reuse what did not change, fit the rest, save every head (see :func:`train_heads`)."""
    needs_views = any(v.uses_views for v in variants)
    folds, mode = resolve_cv(heads, data[variants[0].pooling], uses_views=needs_views)
    heads = dataclasses.replace(heads, cv=folds)
    log.info("%s: selection by %s", name, mode)
    if not len(data[variants[0].pooling].y_val) and heads.cv == 0:
        log.warning("%s has no validation images: variants cannot be compared (set data.split.val > 0 "
                    "or heads.cv >= 2)", name)
    digests = {pooling: data_digest(splits) for pooling, splits in data.items()}
    old = previous_rows(out) if reuse else {}
    rows: dict[str, dict] = {}
    to_fit = []
    # A batch's variants keep fingerprints of their own (each is trained as it would be alone):
    # only those that changed are refitted, as a smaller batch.
    planned = plan_jobs(variants, heads)
    each = {v: job_fingerprint(FitJob(job.kind, (v,)), heads, digests[v.pooling])
            for job in planned if job.together for v in job.variants}
    def reused(row: dict) -> dict:
        # A reused row takes this run's `selection` words: they name heads.cv_below, which fingerprints lack.
        return {**row, "reused": True, "selection": mode}

    # A variant stopped by racing was compared with the best of the others: when any other job is
    # refitted (the best may change), it races again.
    others_change = any(
        (any(old.get(v.id, {}).get("fingerprint") != each[v] for v in job.variants) if job.together else
         not all(old.get(v.id, {}).get("fingerprint") == job_fingerprint(job, heads, digests[v.pooling])
                 for v in job.variants))
        for job in planned)
    for job in planned:
        if job.together:
            changed = tuple(v for v in job.variants if old.get(v.id, {}).get("fingerprint") != each[v]
                            or (others_change and old[v.id].get("raced_out")))
            rows.update({v.id: reused(old[v.id]) for v in job.variants if v not in changed})
            if changed:
                to_fit.append((dataclasses.replace(job, variants=changed, together=len(changed) > 1), None))
            continue
        fingerprint = job_fingerprint(job, heads, digests[job.variants[0].pooling])
        if all(old.get(v.id, {}).get("fingerprint") == fingerprint for v in job.variants):
            # A search also keeps the values its bisection added (same fingerprint).
            rows.update({i: reused(row) for i, row in old.items() if row["fingerprint"] == fingerprint})
        else:
            to_fit.append((job, fingerprint))
    out.mkdir(parents=True, exist_ok=True)
    n_fit = sum(len(job.variants) for job, _ in to_fit)
    log.info("%s: %d variants, %d to fit, %d reused", name, len(variants), n_fit, len(variants) - n_fit)
    # By kind and input: a search's job is the only one of its kind and input, and yields values not in the grid.
    fingerprints = {(job.kind, job.features_key): f for job, f in to_fit if job.search is not None}
    fingerprints.update({v: f for job, f in to_fit for v in job.variants if f is not None})
    fingerprints.update(each)
    probabilities = read_val_proba(out) if reuse else {}
    started = time.perf_counter()
    fitted_ids = {v.id for job, _ in to_fit for v in job.variants}
    complete = [row for i, row in rows.items() if i not in fitted_ids]
    for variant, estimator, row in run_sweep(variants, heads, data, jobs=[job for job, _ in to_fit],
                                             progress=progress, desc=f"heads {name}", complete=complete):
        proba = row.pop("val_proba", None)
        labels = row.pop("scored_labels", None)
        if labels is not None:
            probabilities[SCORED_LABELS] = np.asarray(labels)
        if proba is not None:
            probabilities[variant.id] = proba
        else:
            probabilities.pop(variant.id, None)
        digest = None if estimator is None else save_head(estimator, head_file(out, variant.id))
        fingerprint = fingerprints.get(variant) or fingerprints[(variant.kind, variant.features_key)]
        rows[variant.id] = {**variant_row(variant, mode), **row, "fingerprint": fingerprint,
                            "sha256": digest, "reused": False}
        raced = row.get("raced_out")
        log.debug("%-44s val acc %s  (%.2f s, %+.0f MiB)%s", variant.id, _fmt(row["val_accuracy"]),
                  row["fit_seconds"], row["peak_rss_mib"],
                  f"  stopped by racing after {raced['after_folds']} of {raced['folds']} folds" if raced else "")
        if row.get("not_converged"):
            log.warning("%s/%s: %d of its fits stopped at the solver's iteration limit, not converged (scikit-learn's "
                        "ConvergenceWarning); scored as they stopped, `not_converged` in scores.json", name,
                        variant.id, row["not_converged"])
    fit_wall = time.perf_counter() - started
    ids = sorted(rows, key=lambda i: grid_position(rows[i], variants))
    keep = {f"{i}.joblib" for i in ids if not rows[i].get("raced_out")}
    for stale in out.glob("*.joblib"):
        if stale.name not in keep:
            stale.unlink()
    np.savez(out / VAL_PROBA_FILE, **{i: probabilities[i] for i in [*ids, SCORED_LABELS] if i in probabilities})
    n_fit = sum(not rows[i]["reused"] for i in ids)
    raced = [i for i in ids if rows[i].get("raced_out")]
    if raced:
        log.info("%s: %d variants stopped by racing (heads.race=%g: significantly behind %s after %s folds)", name,
                 len(raced), heads.race, rows[raced[0]]["raced_out"]["leader"],
                 "/".join(str(rows[i]["raced_out"]["after_folds"]) for i in raced))
    summary = {"variants": len(ids), "fitted": n_fit, "reused": len(ids) - n_fit, "raced_out": len(raced),
               "fit_wall_seconds": round(fit_wall, 3), "n_jobs": heads.n_jobs, "cv": heads.cv,
               "selection": mode}
    return [rows[i] for i in ids], summary


def grid_position(row: dict, variants: Sequence[Variant]) -> tuple[int, float]:
    """Sort key of a score row: grid order, a search's values (listed or added by bisection) ascending together."""
    index = next((i for i, v in enumerate(variants) if v.id == row["variant"]), None)
    search = head_kind(row["kind"]).search
    if search is None or search not in row["params"]:
        return index, 0.0
    first = next(i for i, v in enumerate(variants) if v.kind == row["kind"] and v.pooling == row["pooling"]
                 and v.standardize == row["standardize"] and v.pca == row["pca"]
                 and v.augment == row.get("augment", "none") and v.tta == row.get("tta", False))
    return first, float(row["params"][search])


def control_feature_sets(features: Mapping[str, Any]) -> set[str]:
    """The feature sets of params' ``features`` that are controls: random weights beside pretrained ones.

    A backbone with ``weights: none`` is a yardstick of what pretrained weights
    add when some other feature set has them; when none has, it is the
    experiment itself and gets the whole grid.
    """
    random = {key for key, spec in features.items() if spec.weights == "none"}
    return random if len(random) < len(features) else set()


def control_variants(name: str, variants: Sequence[Variant], heads: HeadsParams
                     ) -> tuple[list[Variant], HeadsParams]:
    """The variants fitted on ``features`` and their settings: a control feature set gets a cheap, fixed grid.

    A control feature set (``weights: none``: the backbone with random weights)
    is a yardstick of what the pretrained weights add, not a candidate: only the
    kinds of ``heads.control_kinds`` are fitted on it, at their listed values
    (no coarse-to-fine search), which says that as well as the whole grid would.

    Raises
    ------
    ValueError
        If no variant of the grid is of a control kind.
    """
    kept = [v for v in variants if v.kind in heads.control_kinds]
    if not kept:
        raise ValueError(f"{name} is a control feature set (weights: none): only heads.control_kinds "
                         f"{list(heads.control_kinds)} are fitted on it, and heads.kinds {list(heads.kinds)} has none "
                         "of them; add one to heads.kinds or to heads.control_kinds")
    log.info("%s: a control feature set (weights: none): fitting %s only (heads.control_kinds) at their listed "
             "values, %d of %d variants", name, ", ".join(heads.control_kinds), len(kept), len(variants))
    grids = {kind: dataclasses.replace(grid, refine=0) if hasattr(grid, "refine") else grid
             for kind, grid in heads.grids.items()}
    return kept, dataclasses.replace(heads, grids=grids)


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
        raise ValueError(f"{features}: none of heads.pooling {sorted({v.pooling for v in variants})} applies to its "
                         f"rows of shape {shape}; add one of {list(applicable(shape))} to heads.pooling")
    if left_out:
        log.info("%s: pooling %s does not apply to rows of shape %s; its variants are left out here",
                 features.stem, ", ".join(left_out), shape)
    return kept


def out_of_core(features: Path, variants: Sequence[Variant], heads: HeadsParams, records: Sequence[Record]) -> bool:
    """Whether to train from the store chunk by chunk: forced, or (auto) when the pooled train features are too big."""
    if heads.out_of_core != "auto":
        return bool(heads.out_of_core)
    n_train = sum(r.split == "train" for r in records)
    largest = max(pooled_bytes(features, pooling, n_train) for pooling in {v.pooling for v in variants})
    if largest > heads.memory_limit_mb * 2**20:
        log.info("%s: pooled train features take %.0f MB, more than heads.memory_limit_mb=%g: training out of core",
                 features.stem, largest / 2**20, heads.memory_limit_mb)
        return True
    return False


def _train_out_of_core(features: Path, variants: Sequence[Variant], heads: HeadsParams, out: Path,
                       records: Sequence[Record]) -> tuple[list[dict], dict]:
    """The out-of-core grid: every variant with a streaming form, fitted from dask arrays (no reuse)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for variant, estimator, row in fit_out_of_core(features, variants, heads, records):
        digest = save_head(estimator, head_file(out, variant.id))
        rows.append({**variant_row(variant, "val split (out of core)"), **row, "fingerprint": None, "sha256": digest,
                     "reused": False})
        log.info("%-44s val acc %s  (%.2f s, out of core)", variant.id, _fmt(row["val_accuracy"]), row["fit_seconds"])
    skipped = [v.id for v in variants if v.id not in {r["variant"] for r in rows}]
    if skipped:
        log.warning("%s: %d variants have no out-of-core form (see the registry; PCA and views have none) and "
                    "were skipped: %s",
                    features.stem, len(skipped), ", ".join(skipped[:8]))
    if not rows:
        raise ValueError(f"{features}: no variant of the grid can train out of core; add logreg, svm_linear or "
                         "dense to heads.kinds (without PCA or views), or raise heads.memory_limit_mb")
    keep = {f"{r['variant']}.joblib" for r in rows}
    for stale in out.glob("*.joblib"):
        if stale.name not in keep:
            stale.unlink()
    summary = {"variants": len(rows), "fitted": len(rows), "reused": 0, "skipped": skipped,
               "fit_wall_seconds": round(time.perf_counter() - started, 3), "n_jobs": 1, "cv": 0,
               "selection": "val split (out of core)", "out_of_core": True}
    return rows, summary


def variant_row(variant: Variant, selection: str) -> dict:
    """The identifying part of a score row; ``selection`` says how it was scored (:func:`resolve_cv`)."""
    return {"variant": variant.id, "kind": variant.kind, "pooling": variant.pooling,
            "standardize": variant.standardize, "pca": variant.pca, "augment": variant.augment,
            "tta": variant.tta, "params": dict(variant.params), "selection": selection}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def process_start() -> float:
    """When this process started (``time.time()``), so that interpreter start-up and imports count."""
    import psutil

    return psutil.Process().create_time()


def write_scores(features: Union[Path, Sequence[Path]], heads: HeadsParams, out: Path, records: Sequence[Record], *, progress: bool,
                 reuse: bool, started: float, control: bool = False) -> float:
    """Fit one store's grid and write its ``scores.json``; returns when it finished (``time.time()``).

    ``stage_seconds`` is the wall time since ``started``: for the first store of
    the process its start (interpreter and imports included), for the next ones
    the end of the previous store.
    """
    rows, summary = train_heads(features, heads, out, records, progress=progress, reuse=reuse, control=control)
    summary["control"] = control
    finished = time.time()
    summary["stage_seconds"] = round(finished - started, 3)
    if isinstance(features, (str, Path)):
        store = open_store(features)
        where = {"feature_set": features.stem, "store": str(features), "identity": dict(store.attrs["identity"]),
                 "provenance": provenance_of(store)}
    else:   # a combination: its members' stores and identities, in order
        where = {"feature_set": combination_key([Path(f).stem for f in features]),
                 "store": [str(f) for f in features],
                 "identity": [dict(open_store(f).attrs["identity"]) for f in features],
                 "provenance": combined_provenance(features), "combines": [Path(f).stem for f in features]}
    scores = {**where, "rows": {s: sum(r.split == s for r in records) for s in ("train", "val")},
              "sweep": summary, "variants": rows}
    (out / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    log.info("%s: %d variants (%d fitted, %d reused) in %.1f s", where["feature_set"], summary["variants"],
             summary["fitted"], summary["reused"], summary["stage_seconds"])
    return finished


@contextlib.contextmanager
def parallel_backend(heads: HeadsParams):
    """joblib's default backend for the sweep: loky here, or the Dask cluster of ``heads.scheduler``."""
    if heads.backend != "dask":
        yield
        return
    from distributed import Client

    address = dask_address(heads.scheduler)
    if not address:
        raise ValueError("heads.backend: dask needs a scheduler: set heads.scheduler to its address "
                         "(tcp://host:8786) or DASK_SCHEDULER_ADDRESS")
    with Client(address) as client, joblib.parallel_config(backend="dask"):
        log.info("fitting heads on the Dask cluster at %s (%d workers)", address,
                 len(client.scheduler_info()["workers"]))
        yield


def pooled_bytes(features, pooling: str, rows: int) -> int:
    """Bytes ``rows`` pooled float32 feature rows would take in memory, from the store's metadata."""
    group = open_store(features)
    return int(rows * pooled_width(tuple(group.attrs["feature_shape"]), pooling) * 4)
