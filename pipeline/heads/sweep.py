"""Fit a grid of head variants on in-memory features, in parallel, without copying the features.

The heads stage (:mod:`pipeline.heads.training`) and ``benchmarks/sweep.py`` call
:func:`run_sweep`. What makes trying a head cost seconds:

* **Preprocess once, share by memory map.** Variants that read the same pooling,
  standardisation and PCA share one preprocessed matrix per fold. The parent
  fits the preprocessing on the fold's training rows, writes the result once to
  a temporary ``.npy`` file and opens it with ``mmap_mode="r"``; joblib passes an
  ``np.memmap`` to a loky worker as a file reference, so every worker maps the
  same pages instead of receiving a pickled copy (joblib would otherwise hash
  and dump the array again for every task). Checked by
  ``tests/test_sweep.py::test_workers_get_memory_maps_not_copies``, which
  asserts that workers saw ``np.memmap`` inputs; each row records it as
  ``features_memmapped``.
* **Warm starts along a path.** Variants of a kind whose registry entry names a
  ``path`` (logistic regression: C) that share an input form one job fitted in
  ascending order, each fit starting from the previous solution (``warm_start=True``).
* **Many dense heads, one program.** Variants of a kind with a ``fit_together``
  form (dense heads, while ``heads.dense.batched`` is true) that read the same
  rows — every pooling, standardisation and PCA of one feature set — form one
  job, and every variant × fold of it is one member of one compiled JAX
  program (:mod:`pipeline.heads.dense_batch`), each with its own weights,
  dropout, loss and early stopping, with the results of training each alone.
* **Racing.** Under cross-validation the in-process kinds (dense) run after
  every scikit-learn job of the feature set, fold by fold, against the best
  complete variant so far (:func:`leader_of`): after each fold but the last, a
  variant that a one-sided exact McNemar test on the images scored so far finds
  less accurate than the leader at level ``heads.race`` stops
  (:func:`dominated`; its row's ``raced_out``). Whole folds are compared, never
  partly trained heads, so a head that learns slowly is judged on what it
  ends with.
* **Two phases, no oversubscription.** scikit-learn jobs go to ``heads.n_jobs``
  loky workers (one BLAS thread each; one job runs in this process, with one
  BLAS thread too); then the kinds marked ``in_process`` (dense, JAX) run here
  on every core (or the GPU).

Each variant's row records ``fit_seconds`` (wall time of its fits: the one fit
on train, or with ``heads.cv`` the k fold fits plus the final refit; a batch's
time is shared evenly by its variants) and
``peak_rss_mib``. The latter is the largest increase of the resident memory of
the process that ran the fit over its value just before the fit, sampled every
5 ms by a thread (:class:`~pipeline.heads.watch.PeakRSS`): it counts everything the fit touched that the
process had not already mapped, pages of the shared memory-mapped input read
for the first time included, and a short peak between two samples is missed. A
worker reuses memory freed by its earlier fits, so the number is a lower bound of
what the fit would need on its own, not a sum over variants. A row also says
how many of its fits stopped at their solver's iteration limit
(``not_converged``: scikit-learn's ``ConvergenceWarning``, caught per fit by
:class:`~pipeline.heads.watch.Watched` and logged with the variant's name).

Selection scores: with ``heads.cv == 0`` a variant is fitted on train and
scored on val; with ``heads.cv = k`` it is scored by stratified k-fold
cross-validation on train+val (``val_accuracy`` is then the mean over folds) and
the model kept is refitted on all of train+val. ``heads.cv: auto`` picks one of
the two per feature set (:func:`resolve_cv`): cross-validation with
``heads.cv_folds`` folds when val has fewer than ``heads.cv_below`` images of
some class, the val split otherwise. Each row keeps which images its head got
right (``val_correct``: one ``0``/``1`` per val image, or per train+val image
out of fold, in the same order for every variant of the grid), so that
selection can test whether two variants differ (:mod:`pipeline.selection.scoring`).
Test rows are never seen here.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from pipeline.config import HeadsParams
from pipeline.heads.folds import Fold, Splits, make_folds, preprocess_folds, resolve_cv
from pipeline.heads.racing import Leader, dominated, leader_of
from pipeline.heads.registry import head_kind
from pipeline.heads.search import coarse_to_fine
from pipeline.heads.tally import Tally, class_probabilities, correct_string
from pipeline.heads.variants import Variant, make_head
from pipeline.heads.watch import PeakRSS, Watched

__all__ = [
    "FitJob",
    "Fold",
    "PeakRSS",
    "Splits",
    "class_probabilities",
    "correct_string",
    "fit_job",
    "make_folds",
    "plan_jobs",
    "resolve_cv",
    "run_sweep",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitJob:
    """Variants fitted in one task: a warm-started path (logistic regression's C), variants fitted
    together in one pass (dense heads, ``together``), or one variant."""

    kind: str
    variants: tuple[Variant, ...]
    # The setting searched coarse to fine from these variants' values (pipeline.heads.search), or None.
    search: str | None = None
    # Fitted by the kind's fit_together, each variant on its own input (pipeline.heads.registry).
    together: bool = False

    @property
    def features_key(self):
        return self.variants[0].features_key

    @property
    def features_keys(self) -> tuple:
        """Every input the job's variants read, in order of first use."""
        return tuple(dict.fromkeys(v.features_key for v in self.variants))

    @property
    def in_process(self) -> bool:
        return head_kind(self.kind).in_process


def searched(kind: str, heads: HeadsParams | None) -> str | None:
    """The setting of ``kind`` searched coarse to fine under ``heads``, or None.

    A search needs ``refine`` > 0 and at least two listed values (a coarse
    pass): one listed value is fitted as given.
    """
    entry = head_kind(kind)
    if entry.search is None or heads is None:
        return None
    grid = heads.grid(kind)
    if grid.refine == 0 or len(getattr(grid, entry.search)) < 2:
        return None
    return entry.search


def batched(variant: Variant, heads: HeadsParams | None) -> bool:
    """Whether ``variant`` is fitted together with the others of its kind that read the same rows.

    Its kind needs a ``fit_together`` form and settings saying ``batched: true``;
    a variant that draws a view per epoch (``augment: draw``) has rows of views
    and is fitted alone.
    """
    entry = head_kind(variant.kind)
    return (
        entry.fit_together is not None
        and heads is not None
        and heads.grid(variant.kind).batched
        and variant.augment != "draw"
    )


def plan_jobs(variants: Sequence[Variant], heads: HeadsParams | None = None) -> list[FitJob]:
    """Group variants into jobs: one per warm-started path or search (ascending), one per batch, one per other variant.

    A batch holds the variants of a kind fitted together (:func:`batched`) that
    read the same rows: every pooling, standardisation and PCA of one
    augmentation and TTA setting. Slow kinds first. Without ``heads`` no job is a
    search (the listed values only) or a batch.
    """
    jobs, paths, batches = [], {}, {}
    for variant in variants:
        order = head_kind(variant.kind).path or searched(variant.kind, heads)
        if order is not None:
            paths.setdefault((variant.kind, variant.features_key), []).append(variant)
        elif batched(variant, heads):
            batches.setdefault((variant.kind, variant.augment, variant.tta), []).append(variant)
        else:
            jobs.append(FitJob(variant.kind, (variant,)))
    for (kind, _, _), members in batches.items():
        jobs.append(FitJob(kind, tuple(members), together=len(members) > 1))
    for (kind, _), members in paths.items():
        order = head_kind(kind).path or searched(kind, heads)
        jobs.append(
            FitJob(kind, tuple(sorted(members, key=lambda v: dict(v.params)[order])), search=searched(kind, heads))
        )
    # Slow kinds first, so that the last task to finish is a short one.
    return sorted(jobs, key=lambda j: head_kind(j.kind).fit_order)


def run_job(
    job: FitJob,
    heads: HeadsParams,
    folds: Mapping[tuple, Sequence[Fold]],
    leader: Callable[[], Leader | None] | None = None,
) -> tuple[FitJob, list[tuple[Any, dict]]]:
    """Fit a job on the folds of each input it reads (``folds`` by features key): a batch, a search or the rest.

    ``leader``: what a batch races against (:func:`fit_together_job`), asked for when first needed.
    """
    if job.together or head_kind(job.kind).fit_together is not None and batched(job.variants[0], heads):
        return fit_together_job(job, heads, folds, leader)
    return fit_job(job, heads, folds[job.features_key])


def fit_job(job: FitJob, heads: HeadsParams, folds: Sequence[Fold]) -> tuple[FitJob, list[tuple[Any, dict]]]:
    """Fit every variant of a job on every fold; score the scored folds; keep the last fold's heads.

    Parameters
    ----------
    job : FitJob
    heads : HeadsParams
    folds : sequence of (X_fit, y_fit, X_score, y_score)
        Preprocessed for this job's input; ``X_fit`` of shape (n_fit, n_features).
        The last fold's fit is the one kept.

    Returns
    -------
    job : FitJob
        The same job (results of an unordered parallel run carry it back).
    results : list of (fitted head, row dict), in the job's variant order
    """
    if job.search is not None:
        return search_job(job, heads, folds)
    tallies = {v: Tally() for v in job.variants}
    kept: dict[Variant, Any] = {}
    warm_from = dict.fromkeys(job.variants)
    path = head_kind(job.kind).path
    for index, (X_fit, y_fit, X_score, y_score) in enumerate(folds):
        head, previous = None, None
        for variant in job.variants:
            if head is None or path is None:
                head = make_head(variant, heads)
            else:
                head.set_params(**{path: dict(variant.params)[path]})  # warm start from the previous value
                warm_from[variant] = previous
            with Watched() as fit:
                head.fit(X_fit, y_fit)
            tallies[variant].fitted(fit)
            if X_score is not None and len(y_score):
                tallies[variant].score(head, X_score, y_score)
            if index == len(folds) - 1:
                # The path goes on refitting the same object: keep a copy of each point's solution.
                kept[variant] = copy.deepcopy(head) if path is not None else head
            previous = dict(variant.params).get(path) if path is not None else None
    memmapped = isinstance(folds[-1][0], np.memmap)
    return job, [(kept[v], tallies[v].row(kept[v], memmapped, warm_start_from_C=warm_from[v])) for v in job.variants]


def fit_together_job(
    job: FitJob,
    heads: HeadsParams,
    folds: Mapping[tuple, Sequence[Fold]],
    leader: Callable[[], Leader | None] | None = None,
) -> tuple[FitJob, list[tuple[Any, dict]]]:
    """Fit a batch's variants on every fold with their kind's ``fit_together``, racing them against ``leader()``.

    Without racing every variant × fold is one member of one batched fit. With
    it (cross-validation, ``heads.race`` > 0 and a ``leader`` to ask for the
    best complete variant, scored on every fold: called once, after the first
    fold, so the first fold trains while the leader is still being fitted) the
    folds are fitted one at a time; after each fold but the last, a
    variant whose right and wrong answers on the images scored so far are
    significantly worse than the leader's (:func:`dominated`) stops: its row
    says so (``raced_out``), keeps its partial scores, and it gets no final
    refit and no fitted head. Rows are scored and reported as :func:`fit_job`
    does; a batched fit's time is shared evenly by its members (variant ×
    fold), its peak memory is each one's.

    Raises
    ------
    ValueError
        If the inputs' folds do not hold the same labels in the same order (they
        must be rows of the same images).
    """
    fit_together = head_kind(job.kind).fit_together
    tallies = {v: Tally() for v in job.variants}
    n_folds = len(folds[job.features_key])
    for index in range(n_folds):
        y_fit = folds[job.features_key][index][1]
        if any(not np.array_equal(folds[key][index][1], y_fit) for key in job.features_keys):
            raise ValueError(
                f"variants fitted together must see the same rows; the folds of "
                f"{[v.id for v in job.variants]} hold different labels"
            )
    refit = folds[job.features_key][-1][2] is None  # cross-validation: the last fold is the refit on all
    n_scored = n_folds - 1 if refit else n_folds
    racing = refit and leader is not None and heads.race > 0 and n_scored > 1
    best: Leader | None = None
    rounds = [[index] for index in range(n_folds)] if racing else [list(range(n_folds))]
    live, kept, raced_out = list(job.variants), {}, {}
    for fold_indices in rounds:
        members = [(variant, index) for index in fold_indices for variant in live]
        if not members:
            break
        with Watched() as fit:
            fitted = fit_together(
                [make_head(v, heads) for v, _ in members],
                [folds[v.features_key][i][0] for v, i in members],
                [folds[v.features_key][i][1] for v, i in members],
            )
        for (variant, index), head in zip(members, fitted):
            tallies[variant].fitted(fit, share=len(members))
            _, _, X_score, y_score = folds[variant.features_key][index]
            if X_score is not None and len(y_score):
                tallies[variant].score(head, X_score, y_score)
            if index == n_folds - 1:
                kept[variant] = head
        if racing and fold_indices[0] == 0:
            best = leader()
            racing = best is not None
        if racing and fold_indices[0] < n_scored - 1:
            for variant in list(live):
                p_value = dominated(tallies[variant], best)
                if p_value < heads.race:
                    live.remove(variant)
                    raced_out[variant] = {
                        "after_folds": fold_indices[0] + 1,
                        "folds": n_scored,
                        "leader": best.variant,
                        "p_value": round(p_value, 6),
                    }
    memmapped = all(isinstance(folds[key][-1][0], np.memmap) for key in job.features_keys)
    results = []
    for variant in job.variants:
        if variant in raced_out:
            row = tallies[variant].row(None, memmapped, raced_out=raced_out[variant])
            row.update(val_proba=None, scored_labels=None)  # partial: no soft vote, no labels of record
            results.append((None, row))
        else:
            results.append((kept[variant], tallies[variant].row(kept[variant], memmapped)))
    return job, results


def search_job(job: FitJob, heads: HeadsParams, folds: Sequence[Fold]) -> tuple[FitJob, list[tuple[Any, dict]]]:
    """Search the job's setting coarse to fine (:func:`pipeline.heads.search.coarse_to_fine`) and fit every value tried.

    Each value is scored as :func:`fit_job` scores a variant (on val, or the
    mean over the folds of train+val), warm-started from the fitted head of the
    nearest value tried before on the same fold when the kind walks a path.
    Under cross-validation with ``heads.race`` > 0 the values of a round race
    fold by fold: after each fold but the last, a value that a one-sided exact
    McNemar test (:func:`dominated`) finds less accurate on the images scored
    so far than the best value on them (of this round, or an earlier round's)
    stops; it is scored on those folds only, never refined around, never
    refitted, and its row says ``raced_out``. The returned job holds every
    value tried, ascending: the listed ones and those the bisection added.
    With cross-validation the values not stopped are refitted on all of
    train+val along the same ascending path.
    """
    setting, path = job.search, head_kind(job.kind).path
    template = job.variants[0]
    scored = [fold for fold in folds if fold[2] is not None]
    cross_validated = folds[-1][2] is None
    racing = cross_validated and heads.race > 0 and len(scored) > 1
    fitted: list[dict[float, Any]] = [{} for _ in scored]
    stats: dict[float, Tally] = {}
    warm_from: dict[float, float | None] = {}
    raced_out: dict[float, dict] = {}

    def variant_at(value: float) -> Variant:
        return dataclasses.replace(
            template, params=tuple((k, value if k == setting else v) for k, v in template.params)
        )

    def fit_at(value: float, done: dict[float, Any], X, y) -> tuple[Any, Watched, float | None]:
        start_from = min(done, key=lambda c: abs(math.log10(c) - math.log10(value))) if path and done else None
        if start_from is None:
            head = make_head(variant_at(value), heads)
        else:
            head = copy.deepcopy(done[start_from])
            head.set_params(**{setting: value})  # warm start from the nearest value tried
        with Watched() as fit:
            head.fit(X, y)
        done[value] = head
        return head, fit, start_from

    def race(live: list[float], folds_done: int) -> None:
        # The best value on the images scored so far: of this round (live) or of an earlier one (complete).
        contenders = live + [v for v in stats if v not in live and v not in raced_out]
        n_images = sum(len(part) for part in stats[live[0]].correct)
        correct = {v: np.concatenate(stats[v].correct)[:n_images] for v in contenders}
        best = max(contenders, key=lambda v: (correct[v].mean(), -v))
        leader = Leader(variant_at(best).id, correct_string(correct[best]))
        for value in [v for v in live if v != best]:
            p_value = dominated(stats[value], leader)
            if p_value < heads.race:
                live.remove(value)
                raced_out[value] = {
                    "after_folds": folds_done,
                    "folds": len(scored),
                    "leader": leader.variant,
                    "p_value": round(p_value, 6),
                }

    def score_of(values: list[float]) -> dict[float, tuple[float, ...]]:
        live = list(values)
        for value in values:
            stats[value] = Tally()
        for index, (X_fit, y_fit, X_score, y_score) in enumerate(scored):
            for value in list(live):
                head, fit, start_from = fit_at(value, fitted[index], X_fit, y_fit)
                stats[value].fitted(fit)
                stats[value].score(head, X_score, y_score)
                if index == 0:
                    warm_from[value] = start_from
            if racing and index < len(scored) - 1 and len(live) > 1:
                race(live, index + 1)
        # A value stopped by racing is never the best (nor refined around).
        return {
            value: (-1.0,)
            if value in raced_out
            else tuple(float(np.mean(column)) for column in zip(*stats[value].scores))
            for value in values
        }

    tried = sorted(
        coarse_to_fine([dict(v.params)[setting] for v in job.variants], heads.grid(job.kind).refine, score_of)
    )
    if cross_validated:  # refit every value tried (and not stopped) on all of train+val
        X_all, y_all = folds[-1][0], folds[-1][1]
        final: dict[float, Any] = {}
        for value in (v for v in tried if v not in raced_out):
            stats[value].fitted(fit_at(value, final, X_all, y_all)[1])
    else:
        final = fitted[-1]
    memmapped = isinstance(folds[-1][0], np.memmap)
    results = []
    for value in tried:
        if value in raced_out:
            row = stats[value].row(
                None, memmapped, warm_start_from_C=warm_from[value], searched=setting, raced_out=raced_out[value]
            )
            row.update(val_proba=None, scored_labels=None)  # partial: no soft vote, no labels of record
            results.append((None, row))
        else:
            results.append(
                (
                    final[value],
                    stats[value].row(final[value], memmapped, warm_start_from_C=warm_from[value], searched=setting),
                )
            )
    return FitJob(job.kind, tuple(variant_at(v) for v in tried), search=setting), results


@dataclass(frozen=True)
class Sweep:
    """One feature set's part of a pooled run (:func:`run_sweeps`): its jobs, their settings and rows.

    ``heads.cv`` is a fold count here (resolved); ``complete`` holds the score
    rows of the feature set not refitted now (reused): the in-process kinds
    race against the best of these and of this run's first phase.
    """

    variants: Sequence[Variant]
    heads: HeadsParams
    data: Mapping[str, Splits]
    jobs: Sequence[FitJob]
    complete: Sequence[dict] = ()


def run_sweep(
    variants: Sequence[Variant],
    heads: HeadsParams,
    data: dict[str, Splits],
    *,
    jobs: Sequence[FitJob] | None = None,
    progress: bool = False,
    desc: str = "heads",
    complete: Sequence[dict] = (),
) -> Iterator[tuple[Variant, Pipeline | None, dict]]:
    """Fit one feature set's variants in parallel and yield each as soon as it is done.

    Parameters
    ----------
    variants : sequence of Variant
        Ignored when ``jobs`` is given (a subset of :func:`plan_jobs`' jobs).
    heads : HeadsParams
        ``n_jobs``, ``cv`` (``auto`` is resolved here), ``seed``, ``race`` and every head setting.
    data : dict of str to Splits
        The train and val rows for each pooling the variants use.
    complete : sequence of dict
        See :class:`Sweep`.

    Yields
    ------
    variant : Variant
    estimator : sklearn Pipeline or None
        Fitted preprocessing (if any) and head, ready to ``predict`` on pooled
        features; None for a variant stopped by racing (its row's ``raced_out``).
    row : dict
        ``val_accuracy``, ``val_macro_f1``, ``val_accuracy_std`` (cross-validation
        only), ``fit_seconds``, ``preprocess_seconds``, ``peak_rss_mib``,
        ``features_memmapped``, ``n_epochs`` (dense), ``warm_start_from_C`` (logreg),
        ``not_converged`` (fits that stopped at their iteration limit), ``raced_out``.
    """
    jobs = list(jobs) if jobs is not None else plan_jobs(variants, heads)
    if heads.cv == "auto":
        some = data[next(iter(data))]
        heads = dataclasses.replace(
            heads, cv=resolve_cv(heads, some, uses_views=any(v.uses_views for job in jobs for v in job.variants))[0]
        )
    for _, variant, estimator, row in run_sweeps(
        [Sweep(variants, heads, data, jobs, complete)], progress=progress, desc=desc
    ):
        yield variant, estimator, row


def run_sweeps(
    sweeps: Sequence[Sweep], *, progress: bool = False, desc: str = "heads"
) -> Iterator[tuple[int, Variant, Pipeline | None, dict]]:
    """Fit the jobs of several feature sets as one pooled run; yield ``(sweep index, variant, estimator, row)``.

    Two phases, each keeping every core busy without oversubscribing it. First
    every scikit-learn job of every sweep goes to one pool of ``heads.n_jobs``
    loky workers (one BLAS thread each, joblib's default), so that the long
    jobs of one feature set overlap the short ones of another; then the kinds
    marked ``in_process`` (dense: one JAX program per batch, on every core or the
    GPU) run here, each sweep's racing against the best variant of its own
    feature set (:func:`fit_together_job`). One job in all runs in this process
    (a loky worker costs ~2 s to start), with one BLAS thread too: these fits
    are too small for two threads to gain, and measured ~3× slower with them.
    """
    from pipeline.cli.progress import progress_bar

    with tempfile.TemporaryDirectory(prefix="shoulders-sweep-") as tmp:
        folds, preprocessors, prep_seconds = {}, {}, {}
        for index, sweep in enumerate(sweeps):
            for variant in (v for job in sweep.jobs for v in job.variants):
                key = (index, variant.features_key)
                if key not in folds:
                    raw = make_folds(
                        sweep.data[variant.pooling],
                        sweep.heads.cv,
                        sweep.heads.seed,
                        augment=variant.augment,
                        tta=variant.tta,
                    )
                    workdir = Path(tmp) / str(index)
                    workdir.mkdir(exist_ok=True)
                    folds[key], preprocessors[key], prep_seconds[key] = preprocess_folds(
                        variant, sweep.heads, raw, workdir
                    )

        def inputs(index: int, job: FitJob) -> dict:
            return {key: folds[(index, key)] for key in job.features_keys}

        def finished(index: int, job: FitJob, results) -> Iterator[tuple[int, Variant, Pipeline | None, dict]]:
            for variant, (head, row) in zip(job.variants, results):
                final = preprocessors[(index, variant.features_key)][-1]
                steps = list(final.steps) if final is not None else []
                row["preprocess_seconds"] = round(prep_seconds[(index, variant.features_key)], 4)
                bar.update()
                scored[index].append({"variant": variant.id, **row})
                yield index, variant, None if head is None else Pipeline([*steps, ("head", head)]), row

        in_workers = [(i, job) for i, sweep in enumerate(sweeps) for job in sweep.jobs if not job.in_process]
        in_process = [(i, job) for i, sweep in enumerate(sweeps) for job in sweep.jobs if job.in_process]
        n_jobs = sweeps[0].heads.n_jobs if len(in_workers) > 1 else 1
        scored = [list(sweep.complete) for sweep in sweeps]
        total = sum(len(job.variants) for sweep in sweeps for job in sweep.jobs)
        with (
            progress_bar(total=total, desc=desc, unit="variant", enabled=progress) as bar,
            contextlib.ExitStack() as stack,
        ):
            started = time.perf_counter()
            waiting = collections.Counter(index for index, _ in in_workers)
            buffered: list = []
            pending = iter(())
            if in_workers:
                limit = threadpool_limits(limits=1) if n_jobs == 1 else contextlib.nullcontext()
                stack.enter_context(limit)
                # Every job queued at once: the workers keep fitting while this process trains dense heads.
                pending = iter(
                    joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered", pre_dispatch="all")(
                        joblib.delayed(_run_indexed)(i, job, sweeps[i].heads, inputs(i, job)) for i, job in in_workers
                    )
                )

            def collect_one() -> None:
                index, (job, results) = next(pending)
                buffered.extend(finished(index, job, results))
                waiting[index] -= 1

            def leader_when_ready(index: int) -> Callable[[], Leader | None]:
                # The best complete variant of the feature set, once its scikit-learn jobs are all in.
                def leader() -> Leader | None:
                    while waiting[index]:
                        collect_one()
                    return leader_of(scored[index])

                return leader

            # Each feature set's in-process jobs (dense) start at once, on this process's cores, while the
            # workers fit the scikit-learn jobs; a batch asks for its leader after its first fold.
            dense_started = time.perf_counter()
            for index, job in in_process:
                done = run_job(job, sweeps[index].heads, inputs(index, job), leader_when_ready(index))
                yield from buffered
                buffered.clear()
                yield from finished(index, *done)
            dense_seconds = time.perf_counter() - dense_started
            while any(waiting.values()):
                collect_one()
                yield from buffered
                buffered.clear()
            log.info(
                "%s: %d scikit-learn jobs (%d worker%s) and %d in-process jobs (%.1f s of it) in %.1f s",
                desc,
                len(in_workers),
                n_jobs,
                "s" if n_jobs > 1 else "",
                len(in_process),
                dense_seconds,
                time.perf_counter() - started,
            )


def _run_indexed(index: int, job: FitJob, heads: HeadsParams, folds: Mapping[tuple, Sequence[Fold]]):
    return index, run_job(job, heads, folds)


def start_workers(n_jobs: int) -> Iterator[int]:
    """Start the ``n_jobs`` loky workers now (each imports this module: scikit-learn, ~2 s); exhaust it before fitting.

    The heads stage calls it as soon as it knows it has jobs for them, so that
    the workers start while it reads the other feature sets; :func:`run_sweeps`
    then finds them running (joblib keeps one pool per process).
    """
    return joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
        joblib.delayed(os.getpid)() for _ in range(n_jobs)
    )
