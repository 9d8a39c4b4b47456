"""The rows every fit of a sweep sees: train→val or k folds, preprocessed once per input and memory-mapped.

:func:`make_folds` cuts a pooling's :class:`Splits` into folds (the val split,
or stratified k-fold cross-validation on train+val plus a final refit on all,
with cached augmented views where a variant reads them); :func:`preprocess_folds`
fits a variant's standardisation and PCA on each fold's training rows and
writes the results once to ``.npy`` files opened with ``mmap_mode="r"``, which
joblib hands to loky workers as file references (:mod:`pipeline.heads.sweep`).
Folds of one feature set hold the same images in the same order for every
pooling and preprocessing, so heads fitted together
(:attr:`pipeline.heads.registry.HeadKind.fit_together`) see the same rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipeline.config import HeadsParams
from pipeline.heads.variants import Variant, make_preprocessor


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
    X_train_views: np.ndarray | None = None
    X_val_views: np.ndarray | None = None


# A fold: rows to fit on and rows to score on (None for the final refit of cross-validation).
Fold = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def make_folds(
    splits: Splits, cv: int, seed: int, *, augment: str = "none", tta: bool = False
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]:
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
                raise ValueError(
                    "this variant needs cached augmented views (of val too for TTA): set "
                    "extract.augment.views > 0 (and extract.augment.tta: true) and run the augment stage"
                )
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
        raise ValueError(
            f"heads.cv={cv} folds need at least {cv} images of every class in train+val; "
            f"the smallest class has {smallest}. Use a smaller heads.cv, or 0 for the val split"
        )
    splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    folds = [(X[fit], y[fit], X[score], y[score]) for fit, score in splitter.split(X, y)]
    return folds + [(X, y, None, None)]


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
    return folds, (
        f"{folds}-fold CV on train+val (auto: val has {smallest_val} images of its smallest class, < {heads.cv_below})"
    )


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
            raise ValueError(
                f"heads.pca={variant.pca} components is more than this input allows: "
                f"min(rows, features) = {min(rows_by_features)} for pooling {variant.pooling!r}. "
                "Use fewer components or a variance fraction such as 0.95"
            )
        if preprocessor is not None:
            # Views (n, V, d) are preprocessed as rows, fitted on every view of the training images.
            X_fit = _rows(preprocessor.fit_transform, X_fit)
            X_score = None if X_score is None else _rows(preprocessor.transform, X_score)
        tag = "-".join(map(str, variant.features_key))
        folds.append(
            (
                _memmap(X_fit, workdir / f"{tag}-{index}-fit.npy"),
                y_fit,
                None if X_score is None else _memmap(X_score, workdir / f"{tag}-{index}-score.npy"),
                y_score,
            )
        )
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
