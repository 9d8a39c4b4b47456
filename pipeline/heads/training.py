"""Training the heads grid of every feature set as one pooled run, and writing what it found (the heads stage's core).

Each feature set's part is resolved first into a frozen plan
(:func:`pipeline.heads.plan.plan_feature_set`: variants, folds, what is reused,
what is fitted). :func:`fit_plans` then fits the jobs of every plan as one run
(:func:`pipeline.heads.sweep.run_sweeps`: the scikit-learn jobs of all feature
sets in one pool of workers, then the dense heads, racing), saves every fitted
head (``<variant>.joblib``: [standardize] → [pca] → head, with its sha256,
which later stages check before loading it: :mod:`pipeline.heads.saved`) and
:func:`write_scores` writes each feature set's ``scores.json``: every
variant's validation accuracy and macro-F1 (over the val split, or out of fold
under ``heads.cv``), fit seconds, peak memory, fingerprint, whether it was
reused or stopped by racing, the stage's time and the store's provenance. The
test split is not read here. Files of variants no longer in the grid are
removed, so each folder always holds exactly its grid.

When the pooled training features exceed ``heads.memory_limit_mb`` (or
``heads.out_of_core: true``), a feature set is trained from dask arrays instead,
one block in memory at a time, by each kind's streaming form (:mod:`pipeline.heads.out_of_core`)
(kinds without one, PCA and views are skipped and listed).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import joblib
import numpy as np

from pipeline.config import HeadsParams, dask_address
from pipeline.heads.combination import combined_provenance
from pipeline.heads.estimate import fitting_work, heads_estimate, record_heads
from pipeline.heads.out_of_core import fit_out_of_core
from pipeline.heads.plan import (
    SCORES_FILE,
    HeadsPlan,
    PooledReads,
    control_feature_sets,
    control_variants,
    out_of_core,
    plan_feature_set,
    pooled_bytes,
)
from pipeline.heads.registry import head_kind
from pipeline.heads.saved import head_file, save_head
from pipeline.heads.sweep import Splits, Sweep, run_sweeps, start_workers
from pipeline.heads.variants import Variant
from pipeline.manifest import Record
from pipeline.store.reader import open_store, provenance_of

__all__ = [
    "SCORED_LABELS",
    "SCORES_FILE",
    "VAL_PROBA_FILE",
    "control_feature_sets",
    "control_variants",
    "fit_plans",
    "out_of_core",
    "pooled_bytes",
    "read_val_proba",
    "train_heads",
    "write_scores",
]

log = logging.getLogger(__name__)
VAL_PROBA_FILE = "val_proba.npz"
# The labels of the scored images (val, or train+val in fold order) in VAL_PROBA_FILE; not a variant id.
SCORED_LABELS = "_labels"


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


def train_heads(
    features: Path | Sequence[Path],
    heads: HeadsParams,
    out: Path,
    records: Sequence[Record],
    *,
    progress: bool = True,
    reuse: bool = True,
    control: bool = False,
) -> tuple[list[dict], dict]:
    """Fit the grid on one store, or one combination of stores (what changed only); save every fitted head.

    ``features`` is a store or a combination's member stores; the other
    arguments are :func:`~pipeline.heads.plan.plan_feature_set`'s.

    Returns
    -------
    rows : list of dict
        One score row per variant, in grid order.
    summary : dict
        ``variants``, ``fitted``, ``reused``, ``raced_out`` and ``fit_wall_seconds``.
    """
    stores = [features] if isinstance(features, (str, Path)) else list(features)
    planned = plan_feature_set(stores, heads, out, records, reuse=reuse, control=control)
    return fit_plans([planned], records, progress=progress)[0]


def fit_plans(
    planned: Sequence[tuple[HeadsPlan, dict[str, Splits]]], records: Sequence[Record], *, progress: bool = True
) -> list[tuple[list[dict], dict]]:
    """Fit every plan's jobs as one pooled run; save the heads; one ``(rows, summary)`` per plan, in order.

    Out-of-core plans are trained each on its own, chunk by chunk, first.
    """
    results: dict[int, tuple[list[dict], dict]] = {}
    for index, (plan, _) in enumerate(planned):
        if plan.out_of_core:
            results[index] = _train_out_of_core(plan, records)
    pooled = [(index, plan, data) for index, (plan, data) in enumerate(planned) if not plan.out_of_core]
    rows = {index: dict(plan.reused) for index, plan, _ in pooled}
    probabilities = {index: read_val_proba(plan.out) for index, plan, _ in pooled}
    for _, plan, _ in pooled:
        plan.out.mkdir(parents=True, exist_ok=True)
    sweeps = [
        Sweep(plan.variants, plan.heads, data, plan.jobs, complete=list(plan.reused.values()))
        for _, plan, data in pooled
    ]
    started = time.perf_counter()
    for position, variant, estimator, row in run_sweeps(sweeps, progress=progress, desc="heads"):
        index, plan, _ = pooled[position]
        rows[index][variant.id] = _finished_row(plan, variant, estimator, row, probabilities[index])
    fit_wall = time.perf_counter() - started
    for index, plan, _ in pooled:
        results[index] = _finish(plan, rows[index], probabilities[index], fit_wall)
    return [results[index] for index in range(len(planned))]


def _finished_row(plan: HeadsPlan, variant: Variant, estimator, row: dict, probabilities: dict) -> dict:
    """A fitted variant's score row: its head saved (none when raced out), its probabilities kept aside."""
    proba = row.pop("val_proba", None)
    labels = row.pop("scored_labels", None)
    if labels is not None:
        probabilities[SCORED_LABELS] = np.asarray(labels)
    if proba is not None:
        probabilities[variant.id] = proba
    else:
        probabilities.pop(variant.id, None)
    digest = None if estimator is None else save_head(estimator, head_file(plan.out, variant.id))
    fingerprint = plan.fingerprints.get(variant) or plan.fingerprints[(variant.kind, variant.features_key)]
    raced = row.get("raced_out")
    log.debug(
        "%s/%-44s val acc %s  (%.2f s, %+.0f MiB)%s",
        plan.name,
        variant.id,
        _fmt(row["val_accuracy"]),
        row["fit_seconds"],
        row["peak_rss_mib"],
        f"  stopped by racing after {raced['after_folds']} of {raced['folds']} folds" if raced else "",
    )
    if row.get("not_converged"):
        log.warning(
            "%s/%s: %d of its fits stopped at the solver's iteration limit, not converged (scikit-learn's "
            "ConvergenceWarning); scored as they stopped, `not_converged` in scores.json",
            plan.name,
            variant.id,
            row["not_converged"],
        )
    return {
        **variant_row(variant, plan.selection),
        **row,
        "fingerprint": fingerprint,
        "sha256": digest,
        "reused": False,
    }


def _finish(plan: HeadsPlan, rows: dict[str, dict], probabilities: dict, fit_wall: float) -> tuple[list[dict], dict]:
    """Order a plan's rows, remove files no longer in its grid, save its probabilities; its rows and summary."""
    ids = sorted(rows, key=lambda i: grid_position(rows[i], plan.variants))
    keep = {f"{i}.joblib" for i in ids if not rows[i].get("raced_out")}
    for stale in plan.out.glob("*.joblib"):
        if stale.name not in keep:
            stale.unlink()
    np.savez(plan.out / VAL_PROBA_FILE, **{i: probabilities[i] for i in [*ids, SCORED_LABELS] if i in probabilities})
    n_fit = sum(not rows[i]["reused"] for i in ids)
    raced = [i for i in ids if rows[i].get("raced_out")]
    if raced:
        after = collections.Counter(rows[i]["raced_out"]["after_folds"] for i in raced)
        log.info(
            "%s: %d variants stopped by racing (heads.race=%g), after %s",
            plan.name,
            len(raced),
            plan.heads.race,
            ", ".join(f"{n} fold{'s' if n > 1 else ''}: {after[n]}" for n in sorted(after)),
        )
    summary = {
        "variants": len(ids),
        "fitted": n_fit,
        "reused": len(ids) - n_fit,
        "raced_out": len(raced),
        "fit_wall_seconds": round(fit_wall, 3),
        "n_jobs": plan.heads.n_jobs,
        "cv": plan.heads.cv,
        "selection": plan.selection,
        "control": plan.control,
    }
    return [rows[i] for i in ids], summary


def grid_position(row: dict, variants: Sequence[Variant]) -> tuple[int, float]:
    """Sort key of a score row: grid order, a search's values (listed or added by bisection) ascending together."""
    index = next((i for i, v in enumerate(variants) if v.id == row["variant"]), None)
    search = head_kind(row["kind"]).search
    if search is None or search not in row["params"]:
        return index, 0.0
    first = next(
        i
        for i, v in enumerate(variants)
        if v.kind == row["kind"]
        and v.pooling == row["pooling"]
        and v.standardize == row["standardize"]
        and v.pca == row["pca"]
        and v.augment == row.get("augment", "none")
        and v.tta == row.get("tta", False)
    )
    return first, float(row["params"][search])


def _train_out_of_core(plan: HeadsPlan, records: Sequence[Record]) -> tuple[list[dict], dict]:
    """The out-of-core grid: every variant with a streaming form, fitted from dask arrays (no reuse)."""
    features, out, variants = plan.stores[0], plan.out, plan.variants
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for variant, estimator, row in fit_out_of_core(features, variants, plan.heads, records):
        digest = save_head(estimator, head_file(out, variant.id))
        rows.append(
            {**variant_row(variant, plan.selection), **row, "fingerprint": None, "sha256": digest, "reused": False}
        )
        log.debug("%-44s val acc %s  (%.2f s, out of core)", variant.id, _fmt(row["val_accuracy"]), row["fit_seconds"])
    skipped = [v.id for v in variants if v.id not in {r["variant"] for r in rows}]
    if skipped:
        log.warning(
            "%s: %d variants have no out-of-core form (see the registry; PCA and views have none) and were skipped: %s",
            features.stem,
            len(skipped),
            ", ".join(skipped[:8]),
        )
    if not rows:
        raise ValueError(
            f"{features}: no variant of the grid can train out of core; add logreg, svm_linear or "
            "dense to heads.kinds (without PCA or views), or raise heads.memory_limit_mb"
        )
    keep = {f"{r['variant']}.joblib" for r in rows}
    for stale in out.glob("*.joblib"):
        if stale.name not in keep:
            stale.unlink()
    summary = {
        "variants": len(rows),
        "fitted": len(rows),
        "reused": 0,
        "skipped": skipped,
        "fit_wall_seconds": round(time.perf_counter() - started, 3),
        "n_jobs": 1,
        "cv": 0,
        "selection": plan.selection,
        "out_of_core": True,
        "control": plan.control,
    }
    return rows, summary


def variant_row(variant: Variant, selection: str) -> dict:
    """The identifying part of a score row; ``selection`` says how it was scored (:func:`resolve_cv`)."""
    return {
        "variant": variant.id,
        "kind": variant.kind,
        "pooling": variant.pooling,
        "standardize": variant.standardize,
        "pca": variant.pca,
        "augment": variant.augment,
        "tta": variant.tta,
        "params": dict(variant.params),
        "selection": selection,
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def process_start() -> float:
    """When this process started (``time.time()``), so that interpreter start-up and imports count."""
    import psutil

    return psutil.Process().create_time()


def write_scores(
    plan: HeadsPlan,
    rows: list[dict],
    summary: dict,
    records: Sequence[Record],
    *,
    stage_seconds: float | None = None,
) -> None:
    """Write one feature set's ``scores.json``: where its rows came from, the run's summary and every row.

    ``stage_seconds`` is this feature set's share of the heads stage's wall
    time (interpreter and imports included): the stage's time split by each
    feature set's fitting seconds, so that the shares add up to the stage.
    """
    if plan.combines is None:
        store = open_store(plan.stores[0])
        where = {
            "feature_set": plan.name,
            "store": str(plan.stores[0]),
            "identity": dict(store.attrs["identity"]),
            "provenance": provenance_of(store),
        }
    else:  # a combination: its members' stores and identities, in order
        where = {
            "feature_set": plan.name,
            "store": [str(f) for f in plan.stores],
            "identity": [dict(open_store(f).attrs["identity"]) for f in plan.stores],
            "provenance": combined_provenance(plan.stores),
            "combines": plan.combines,
        }
    summary = {**summary, "stage_seconds": None if stage_seconds is None else round(stage_seconds, 3)}
    scores = {
        **where,
        "rows": {s: sum(r.split == s for r in records) for s in ("train", "val")},
        "sweep": summary,
        "variants": rows,
    }
    (plan.out / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    log.info(
        "%s: %d variants (%d fitted, %d reused%s)",
        plan.name,
        summary["variants"],
        summary["fitted"],
        summary["reused"],
        f", {summary['raced_out']} stopped by racing" if summary.get("raced_out") else "",
    )


def train_and_write(
    stores: Sequence[Sequence[Path]],
    heads: HeadsParams,
    outs: Sequence[Path],
    records: Sequence[Record],
    *,
    controls: Sequence[bool] = (),
    progress: bool = True,
    reuse: bool = True,
    started: float | None = None,
) -> list[tuple[list[dict], dict]]:
    """Plan, fit (one pooled run) and write ``scores.json`` for several feature sets; their rows and summaries.

    ``stores[i]`` is one store or a combination's members, written to
    ``outs[i]``; ``started`` (``time.time()``, default now) is when the stage
    started, for the ``stage_seconds`` shares.
    """
    started = time.time() if started is None else started
    controls = list(controls) or [False] * len(stores)
    planned, workers, reads = [], None, PooledReads()  # a combination's members are read once, by their own plans
    for members, out, control in zip(stores, outs, controls):
        planned.append(plan_feature_set(members, heads, out, records, reuse=reuse, control=control, reads=reads))
        in_workers = sum(not job.in_process for plan, _ in planned for job in plan.jobs)
        if workers is None and heads.n_jobs != 1 and in_workers > 1:
            workers = start_workers(heads.n_jobs)  # they start while the other feature sets are read
    for _ in workers or ():
        pass
    variants, units = fitting_work([plan for plan, _ in planned], records)
    if line := heads_estimate(heads, variants=variants, units=units):
        log.info("%s", line)
    fitting_started = time.perf_counter()
    results = fit_plans(planned, records, progress=progress)
    record_heads(heads, units=units, seconds=time.perf_counter() - fitting_started)
    stage = time.time() - started
    fitting = [sum(r["fit_seconds"] for r in rows if not r.get("reused")) + 1e-9 for rows, _ in results]
    for (plan, _), (rows, summary), share in zip(planned, results, fitting):
        write_scores(plan, rows, summary, records, stage_seconds=stage * share / sum(fitting))
    log.info(
        "heads: %d feature sets, %d variants (%d fitted, %d reused) in %.1f s",
        len(planned),
        sum(s["variants"] for _, s in results),
        sum(s["fitted"] for _, s in results),
        sum(s["reused"] for _, s in results),
        stage,
    )
    return results


@contextlib.contextmanager
def parallel_backend(heads: HeadsParams):
    """joblib's default backend for the sweep: loky here, or the Dask cluster of ``heads.scheduler``."""
    if heads.backend != "dask":
        yield
        return
    from distributed import Client

    address = dask_address(heads.scheduler)
    if not address:
        raise ValueError(
            "heads.backend: dask needs a scheduler: set heads.scheduler to its address "
            "(tcp://host:8786) or DASK_SCHEDULER_ADDRESS"
        )
    with Client(address) as client, joblib.parallel_config(backend="dask"):
        log.info(
            "fitting heads on the Dask cluster at %s (%d workers)", address, len(client.scheduler_info()["workers"])
        )
        yield
