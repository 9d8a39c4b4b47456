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
* **Keras in one process.** scikit-learn jobs go to ``heads.n_jobs`` loky
  workers (when more than one needs fitting); kinds marked ``in_process``
  (dense, Keras) run in this process meanwhile, so TensorFlow is imported once
  and never in a worker.

Each variant's row records ``fit_seconds`` (wall time of its fits: the one fit
on train, or with ``heads.cv`` the k fold fits plus the final refit) and
``peak_rss_mib``. The latter is the largest increase of the resident memory of
the process that ran the fit over its value just before the fit, sampled every
5 ms by a thread (:class:`PeakRSS`): it counts everything the fit touched that the
process had not already mapped, pages of the shared memory-mapped input read
for the first time included, and a short peak between two samples is missed. A
worker reuses memory freed by its earlier fits, so the number is a lower bound of
what the fit would need on its own, not a sum over variants.

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

import copy
import dataclasses
import itertools
import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import joblib
import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from pipeline.config import HeadsParams
from pipeline.heads.registry import head_kind
from pipeline.heads.search import coarse_to_fine
from pipeline.heads.variants import Variant, make_head, make_preprocessor, predict_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """The train and val rows of one pooling of one feature set.

    ``X_train`` has shape (n_train, n_features), ``y_train`` (n_train,), and the
    same for val.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    # Cached augmented views, (n, K, n_features), when a variant uses them (heads.augment / heads.tta).
    X_train_views: Optional[np.ndarray] = None
    X_val_views: Optional[np.ndarray] = None


@dataclass(frozen=True)
class FitJob:
    """Variants fitted together in one task: a warm-started path (logistic regression's C), or one variant."""

    kind: str
    variants: tuple[Variant, ...]
    # The setting searched coarse to fine from these variants' values (pipeline.heads.search), or None.
    search: Optional[str] = None

    @property
    def features_key(self):
        return self.variants[0].features_key

    @property
    def in_process(self) -> bool:
        return head_kind(self.kind).in_process


def searched(kind: str, heads: Optional[HeadsParams]) -> Optional[str]:
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


def plan_jobs(variants: Sequence[Variant], heads: Optional[HeadsParams] = None) -> list[FitJob]:
    """Group variants into jobs: one per warm-started path or search (ascending), one per other variant.

    Slow kinds first. Without ``heads`` no job is a search (the listed values only).
    """
    jobs, paths = [], {}
    for variant in variants:
        order = head_kind(variant.kind).path or searched(variant.kind, heads)
        if order is not None:
            paths.setdefault((variant.kind, variant.features_key), []).append(variant)
        else:
            jobs.append(FitJob(variant.kind, (variant,)))
    for (kind, _), members in paths.items():
        order = head_kind(kind).path or searched(kind, heads)
        jobs.append(FitJob(kind, tuple(sorted(members, key=lambda v: dict(v.params)[order])),
                           search=searched(kind, heads)))
    # Slow kinds first, so that the last task to finish is a short one.
    return sorted(jobs, key=lambda j: head_kind(j.kind).fit_order)


class PeakRSS:
    """Context manager: the peak increase of this process's resident memory during the block, in MiB.

    Sampled every ``interval`` seconds by a daemon thread (psutil), plus once
    at exit; see the module docstring for what the number means.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mib = 0.0

    def __enter__(self) -> "PeakRSS":
        import psutil

        self._process = psutil.Process()
        self._baseline = self._peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mib = round((self._peak - self._baseline) / 2**20, 2)


def resolve_cv(heads: HeadsParams, splits: Splits, *, uses_views: bool = False) -> tuple[int, str]:
    """The fold count selection uses on these rows (0: the val split) and why, from ``heads.cv``.

    ``auto`` cross-validates with ``heads.cv_folds`` folds (fewer when the
    smallest class of train+val has fewer images) when val has fewer than
    ``heads.cv_below`` images of some class; it keeps the val split when a
    variant reads augmented views (they exist for train, not for folds of
    train+val) or when train+val cannot give two folds.

    Returns
    -------
    folds : int
        0 or the fold count.
    mode : str
        For reports: ``"val split"`` or ``"5-fold CV on train+val"``, with the reason under ``auto``.
    """
    if heads.cv != "auto":
        return heads.cv, "val split" if heads.cv == 0 else f"{heads.cv}-fold CV on train+val"
    n_classes = int(max(splits.y_train.max(initial=-1), splits.y_val.max(initial=-1))) + 1
    per_class = np.bincount(splits.y_val, minlength=n_classes)
    smallest_val = int(per_class.min()) if n_classes else 0
    if smallest_val >= heads.cv_below:
        return 0, f"val split (auto: val has >= {heads.cv_below} images of every class)"
    if uses_views:
        return 0, "val split (auto: variants read augmented views, which folds of train+val lack)"
    both = np.bincount(np.concatenate([splits.y_train, splits.y_val]), minlength=n_classes)
    folds = min(heads.cv_folds, int(both.min()) if n_classes else 0)
    if folds < 2:
        return 0, "val split (auto: a class of train+val has fewer than 2 images)"
    return folds, (f"{folds}-fold CV on train+val (auto: val has {smallest_val} images of its smallest class, "
                   f"< {heads.cv_below})")


# A fold: rows to fit on and rows to score on (None for the final refit of cross-validation).
Fold = tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]


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
    scores = {v: [] for v in job.variants}
    correct = {v: [] for v in job.variants}
    proba = {v: [] for v in job.variants}
    seconds = dict.fromkeys(job.variants, 0.0)
    peaks = dict.fromkeys(job.variants, 0.0)
    kept: dict[Variant, Any] = {}
    warm_from = dict.fromkeys(job.variants)
    path = head_kind(job.kind).path
    for index, (X_fit, y_fit, X_score, y_score) in enumerate(folds):
        head, previous = None, None
        for variant in job.variants:
            if head is None or path is None:
                head = make_head(variant, heads)
            else:
                head.set_params(**{path: dict(variant.params)[path]})   # warm start from the previous value
                warm_from[variant] = previous
            with PeakRSS() as memory:
                started = time.perf_counter()
                head.fit(X_fit, y_fit)
                seconds[variant] += time.perf_counter() - started
            peaks[variant] = max(peaks[variant], memory.peak_mib)
            if X_score is not None and len(y_score):
                predicted = predict_views(head, X_score)
                correct[variant].append(np.asarray(predicted) == np.asarray(y_score))
                proba[variant].append(class_probabilities(head, X_score))
                scores[variant].append((accuracy_score(y_score, predicted),
                                        f1_score(y_score, predicted, average="macro", zero_division=0)))
            if index == len(folds) - 1:
                # The path goes on refitting the same object: keep a copy of each point's solution.
                kept[variant] = copy.deepcopy(head) if path is not None else head
            previous = dict(variant.params).get(path) if path is not None else None
    results = []
    for variant in job.variants:
        accuracy = [a for a, _ in scores[variant]]
        f1 = [f for _, f in scores[variant]]
        head = kept[variant]
        row = {"val_accuracy": float(np.mean(accuracy)) if accuracy else None,
               "val_macro_f1": float(np.mean(f1)) if f1 else None,
               "val_accuracy_std": float(np.std(accuracy)) if len(accuracy) > 1 else None,
               "fit_seconds": round(seconds[variant], 4),
               "peak_rss_mib": peaks[variant],
               "features_memmapped": isinstance(folds[-1][0], np.memmap),
               "n_epochs": getattr(head, "n_epochs_", None),
               "warm_start_from_C": warm_from[variant],
               "val_correct": correct_string(np.concatenate(correct[variant])) if correct[variant] else None,
               "val_proba": _stack(proba[variant]),
               "scored_labels": np.concatenate([f[3] for f in folds if f[2] is not None]) if accuracy else None}
        results.append((head, row))
    return job, results


def search_job(job: FitJob, heads: HeadsParams, folds: Sequence[Fold]) -> tuple[FitJob, list[tuple[Any, dict]]]:
    """Search the job's setting coarse to fine (:func:`pipeline.heads.search.coarse_to_fine`) and fit every value tried.

    Each value is scored as :func:`fit_job` scores a variant (on val, or the
    mean over the folds of train+val), warm-started from the fitted head of the
    nearest value tried before when the kind walks a path. The returned job
    holds every value tried, ascending: the listed ones and those the
    bisection added. With cross-validation the kept heads are refitted on all
    of train+val along the same ascending path.
    """
    setting, path = job.search, head_kind(job.kind).path
    template = job.variants[0]
    scored = [fold for fold in folds if fold[2] is not None]
    fitted: list[dict[float, Any]] = [{} for _ in scored]
    stats: dict[float, dict] = {}

    def variant_at(value: float) -> Variant:
        return dataclasses.replace(template, params=tuple((k, value if k == setting else v) for k, v in template.params))

    def fit_at(value: float, done: dict[float, Any], X, y) -> tuple[Any, float, float, Optional[float]]:
        start_from = min(done, key=lambda c: abs(math.log10(c) - math.log10(value))) if path and done else None
        if start_from is None:
            head = make_head(variant_at(value), heads)
        else:
            head = copy.deepcopy(done[start_from])
            head.set_params(**{setting: value})   # warm start from the nearest value tried
        with PeakRSS() as memory:
            started = time.perf_counter()
            head.fit(X, y)
            seconds = time.perf_counter() - started
        done[value] = head
        return head, seconds, memory.peak_mib, start_from

    def score_of(values: list[float]) -> dict[float, tuple[float, float]]:
        out = {}
        for value in values:
            row = stats.setdefault(value, {"scores": [], "correct": [], "proba": [], "seconds": 0.0, "peak": 0.0,
                                           "from": None})
            for index, (X_fit, y_fit, X_score, y_score) in enumerate(scored):
                head, seconds, peak, start_from = fit_at(value, fitted[index], X_fit, y_fit)
                predicted = predict_views(head, X_score)
                row["correct"].append(np.asarray(predicted) == np.asarray(y_score))
                row["proba"].append(class_probabilities(head, X_score))
                row["scores"].append((accuracy_score(y_score, predicted),
                                      f1_score(y_score, predicted, average="macro", zero_division=0)))
                row["seconds"] += seconds
                row["peak"] = max(row["peak"], peak)
                row["from"] = start_from if index == 0 else row["from"]
            out[value] = tuple(float(np.mean(column)) for column in zip(*row["scores"]))
        return out

    tried = sorted(coarse_to_fine([dict(v.params)[setting] for v in job.variants], heads.grid(job.kind).refine,
                                  score_of))
    if folds[-1][2] is None:       # cross-validation: refit every value tried on all of train+val
        X_all, y_all = folds[-1][0], folds[-1][1]
        final: dict[float, Any] = {}
        for value in tried:
            _, seconds, peak, _ = fit_at(value, final, X_all, y_all)
            stats[value]["seconds"] += seconds
            stats[value]["peak"] = max(stats[value]["peak"], peak)
    else:
        final = fitted[-1]
    results = []
    for value in tried:
        row, head = stats[value], final[value]
        accuracy = [a for a, _ in row["scores"]]
        results.append((head, {
            "val_accuracy": float(np.mean(accuracy)), "val_macro_f1": float(np.mean([f for _, f in row["scores"]])),
            "val_accuracy_std": float(np.std(accuracy)) if len(accuracy) > 1 else None,
            "fit_seconds": round(row["seconds"], 4), "peak_rss_mib": row["peak"],
            "features_memmapped": isinstance(folds[-1][0], np.memmap), "n_epochs": getattr(head, "n_epochs_", None),
            "warm_start_from_C": row["from"], "val_correct": correct_string(np.concatenate(row["correct"])),
            "searched": setting, "val_proba": _stack(row["proba"]),
            "scored_labels": np.concatenate([f[3] for f in scored])}))
    return FitJob(job.kind, tuple(variant_at(v) for v in tried), search=setting), results


def class_probabilities(head: Any, X: np.ndarray) -> Optional[np.ndarray]:
    """Class probabilities of scored rows, (n, n_classes) float32, for soft voting; None without them.

    Kinds without ``predict_proba`` (SVMs) and views (test-time augmentation) give None.
    """
    if X.ndim != 2 or not hasattr(head, "predict_proba"):
        return None
    return np.asarray(head.predict_proba(X), dtype=np.float32)


def _stack(parts: list) -> Optional[np.ndarray]:
    # Folds in order, like val_correct; None when a fold gave none.
    return None if not parts or any(p is None for p in parts) else np.concatenate(parts)


def correct_string(correct: np.ndarray) -> str:
    """Which scored images a head got right, as one ``0``/``1`` character each (compact in scores.json)."""
    return "".join("1" if right else "0" for right in np.asarray(correct, dtype=bool))


def make_folds(splits: Splits, cv: int, seed: int, *, augment: str = "none", tta: bool = False
               ) -> list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]]:
    """Raw (unpreprocessed) folds: train→val, or k stratified folds of train+val and a final refit on all.

    With augmented views (``cv == 0`` only): ``augment="stack"`` adds every view
    of every training image as a row with its label; ``"draw"`` gives the
    training rows as ``(n, 1 + K, n_features)`` (clean first) for a dense head
    to draw one per epoch; ``tta`` gives the val rows as ``(n, 1 + K, n_features)``.

    Raises
    ------
    ValueError
        If ``cv`` exceeds the smallest class count of train+val, or views are
        needed and were not read.
    """
    if cv == 0:
        X_fit, y_fit, X_score = splits.X_train, splits.y_train, splits.X_val
        if augment != "none" or tta:
            if splits.X_train_views is None or (tta and splits.X_val_views is None):
                raise ValueError("this variant needs cached augmented views (of val too for TTA): set "
                                 "extract.augment.views > 0 (and extract.augment.tta: true) and run the augment stage")
        if augment == "stack":
            views = splits.X_train_views
            X_fit = np.concatenate([X_fit, views.reshape(-1, views.shape[-1])])
            y_fit = np.concatenate([y_fit, np.repeat(splits.y_train, views.shape[1])])
        elif augment == "draw":
            X_fit = np.concatenate([X_fit[:, None], splits.X_train_views], axis=1)
        if tta:
            X_score = np.concatenate([X_score[:, None], splits.X_val_views], axis=1)
        return [(X_fit, y_fit, X_score, splits.y_val)]
    X = np.concatenate([splits.X_train, splits.X_val])
    y = np.concatenate([splits.y_train, splits.y_val])
    smallest = int(np.bincount(y).min()) if len(y) else 0
    if cv > smallest:
        raise ValueError(f"heads.cv={cv} folds need at least {cv} images of every class in train+val; "
                         f"the smallest class has {smallest}. Use a smaller heads.cv, or 0 for the val split")
    splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    folds = [(X[fit], y[fit], X[score], y[score]) for fit, score in splitter.split(X, y)]
    return folds + [(X, y, None, None)]


def preprocess_folds(variant: Variant, heads: HeadsParams, raw_folds, workdir: Path) -> tuple[list, list, float]:
    """Fit a variant's preprocessing on each fold's rows to fit, transform, and memory-map the results.

    Returns
    -------
    folds : list of Fold
        Feature matrices as read-only ``np.memmap`` of files under ``workdir``.
    preprocessors : list of fitted Pipeline or None, one per fold
    seconds : float
        Time spent fitting and transforming.
    """
    started = time.perf_counter()
    folds, preprocessors = [], []
    for index, (X_fit, y_fit, X_score, y_score) in enumerate(raw_folds):
        preprocessor = make_preprocessor(variant, heads)
        rows_by_features = (int(np.prod(X_fit.shape[:-1])), X_fit.shape[-1])
        if variant.pca is not None and isinstance(variant.pca, int) and variant.pca > min(rows_by_features):
            raise ValueError(f"heads.pca={variant.pca} components is more than this input allows: "
                             f"min(rows, features) = {min(rows_by_features)} for pooling {variant.pooling!r}. "
                             "Use fewer components or a variance fraction such as 0.95")
        if preprocessor is not None:
            # Views (n, V, d) are preprocessed as rows, fitted on every view of the training images.
            X_fit = _rows(preprocessor.fit_transform, X_fit)
            X_score = None if X_score is None else _rows(preprocessor.transform, X_score)
        tag = "-".join(map(str, variant.features_key))
        folds.append((_memmap(X_fit, workdir / f"{tag}-{index}-fit.npy"), y_fit,
                      None if X_score is None else _memmap(X_score, workdir / f"{tag}-{index}-score.npy"), y_score))
        preprocessors.append(preprocessor)
    return folds, preprocessors, time.perf_counter() - started


def _rows(transform, X: np.ndarray) -> np.ndarray:
    """Apply a row transform to (n, d), or to each view of (n, V, d)."""
    flat = X.reshape(-1, X.shape[-1])
    out = transform(flat).astype(np.float32, copy=False)
    return out.reshape(*X.shape[:-1], out.shape[-1])


def _memmap(X: np.ndarray, path: Path) -> np.memmap:
    np.save(path, np.ascontiguousarray(X, dtype=np.float32))
    return np.load(path, mmap_mode="r")


def run_sweep(variants: Sequence[Variant], heads: HeadsParams, data: dict[str, Splits], *,
              jobs: Optional[Sequence[FitJob]] = None, progress: bool = False,
              desc: str = "heads") -> Iterator[tuple[Variant, Pipeline, dict]]:
    """Fit variants in parallel and yield each as soon as it is done.

    Parameters
    ----------
    variants : sequence of Variant
        Ignored when ``jobs`` is given (a subset of :func:`plan_jobs`' jobs).
    heads : HeadsParams
        ``n_jobs``, ``cv``, ``seed`` and every head setting.
    data : dict of str to Splits
        The train and val rows for each pooling the variants use.

    Yields
    ------
    variant : Variant
    estimator : sklearn Pipeline
        Fitted preprocessing (if any) and head, ready to ``predict`` on pooled features.
    row : dict
        ``val_accuracy``, ``val_macro_f1``, ``val_accuracy_std`` (cross-validation
        only), ``fit_seconds``, ``preprocess_seconds``, ``peak_rss_mib``,
        ``features_memmapped``, ``n_epochs`` (dense), ``warm_start_from_C`` (logreg).
    """
    from tqdm.auto import tqdm

    jobs = list(jobs) if jobs is not None else plan_jobs(variants, heads)
    if heads.cv == "auto":
        some = data[next(iter(data))]
        heads = dataclasses.replace(heads, cv=resolve_cv(heads, some, uses_views=any(
            v.uses_views for job in jobs for v in job.variants))[0])
    with tempfile.TemporaryDirectory(prefix="shoulders-sweep-") as tmp:
        folds, preprocessors, prep_seconds = {}, {}, {}
        for job in jobs:
            key = job.features_key
            if key not in folds:
                raw = make_folds(data[key[0]], heads.cv, heads.seed, augment=job.variants[0].augment,
                                 tta=job.variants[0].tta)
                folds[key], preprocessors[key], prep_seconds[key] = preprocess_folds(job.variants[0], heads, raw,
                                                                                    Path(tmp))
        # Dispatch starts now: the loky workers start and fit while this process imports
        # TensorFlow and trains the Keras heads. A worker costs ~2 s to start (a Python
        # process importing scikit-learn), more than a single job usually takes: one job
        # (a rerun that refits one changed C path, say) runs in this process instead.
        in_workers = [j for j in jobs if not j.in_process]
        n_jobs = heads.n_jobs if len(in_workers) > 1 else 1
        pending = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            joblib.delayed(fit_job)(job, heads, folds[job.features_key]) for job in in_workers) if in_workers else ()
        in_process = [j for j in jobs if j.in_process]
        if in_process:
            import keras  # noqa: F401  (here, so that no variant's fit_seconds include TensorFlow's import)
        done = (fit_job(job, heads, folds[job.features_key]) for job in in_process)
        total = sum(len(j.variants) for j in jobs)
        with tqdm(total=total, desc=desc, unit="variant", disable=not progress) as bar:
            for job, results in itertools.chain(done, pending):
                final = preprocessors[job.features_key][-1]
                for variant, (head, row) in zip(job.variants, results):
                    steps = list(final.steps) if final is not None else []
                    row["preprocess_seconds"] = round(prep_seconds[job.features_key], 4)
                    bar.update()
                    yield variant, Pipeline([*steps, ("head", head)]), row
