"""The diagnose stage's work: from evaluate's choices and the cached features to pictures and tables.

:func:`diagnose` writes, under ``out`` (``reports/diagnose``):

* ``predictions.csv`` — every val and test image of the chosen model: id, path,
  split, true and predicted class, confidence, each class's probability, and
  ``out_of_fold``: under k-fold CV selection the final heads were refitted on
  train+val, so val's rows are out-of-fold predictions instead (in-sample
  ones would flatter it);
* ``errors.jpg``, ``least_confident.jpg``, ``label_issues.jpg`` — contact
  sheets (``dvc plots`` image plots) and ``thumbs/`` — the thumbnails the
  Markdown pages link;
* ``learning_curve.csv`` — accuracy against training images per class, per
  feature set (:mod:`pipeline.diagnosis.learning_curve`);
* ``label_issues.csv`` — every train and val image ranked by label quality
  (:mod:`pipeline.diagnosis.label_issues`);
* ``map.csv`` — t-SNE coordinates of every image per feature set, with its
  class and whether it is an error or a suspected label issue
  (:mod:`pipeline.diagnosis.projection`);
* ``summary.json`` — the curve's sentence per feature set, counts, and the
  seconds each part took;

and the pages ``errors``, ``label_issues`` and ``learning_curve`` (Markdown,
:mod:`pipeline.diagnosis.markdown`). No backbone runs: everything is read from
the feature stores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from pipeline.config import DiagnoseParams
from pipeline.diagnosis.chosen import ChosenHead, best_feature_set, chosen_heads, load_chosen, load_ensemble
from pipeline.diagnosis.gallery import contact_sheet, write_thumbnail
from pipeline.diagnosis.label_issues import cross_val_proba, rank_label_issues
from pipeline.diagnosis.learning_curve import extrapolation, learning_curve
from pipeline.diagnosis.markdown import errors_page, label_issues_page, learning_curve_page
from pipeline.diagnosis.predictions import (
    Predictions,
    confused_pairs,
    predict_ensemble,
    predict_splits,
    prediction_rows,
)
from pipeline.diagnosis.projection import project
from pipeline.manifest import Record, write_text_atomically
from pipeline.reporting.tables import write_csv
from pipeline.store.reader import FeatureSet

log = logging.getLogger(__name__)

#: Rows of the confused-pairs table.
TOP_PAIRS = 10


def _folds(n_train: int, y: np.ndarray, cv: int, seed: int) -> tuple[list, str]:
    """(train rows, evaluation rows) pairs over train+val rows: the val split, or ``cv`` folds of train+val."""
    rows = np.arange(len(y))
    if cv == 0:
        if n_train == len(y):
            raise ValueError(
                "the learning curve is scored on validation, and the validation split is empty: "
                "set data.split.val above 0, or heads.cv >= 2 to score it on folds of train+val"
            )
        return [(rows[:n_train], rows[n_train:])], "the validation split"
    k = min(cv, int(np.bincount(y)[np.unique(y)].min()))
    if k < 2:
        raise ValueError(f"heads.cv={cv}: some class has fewer than 2 train+val images, so no fold can hold it out")
    return list(
        StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rows, y)
    ), f"{k}-fold cross-validation on train+val"


def curve_of(head: ChosenHead, train: FeatureSet, val: FeatureSet, settings: DiagnoseParams, cv: int) -> dict:
    """A chosen head's learning curve on train+val, and its extrapolation (test is not read).

    Scored on the heads stage's own choice of folds for the feature set
    (``heads.cv: auto`` is resolved there), else on ``cv``.
    """
    X_tv = np.concatenate([np.asarray(train.X), np.asarray(val.X)])
    y_tv = np.concatenate([train.y, val.y])
    folds, evaluated_on = _folds(len(train.y), y_tv, head.cv if head.cv is not None else cv, settings.seed)
    points = learning_curve(
        head.estimator, X_tv, y_tv, folds, settings.curve_per_class, settings.curve_draws, settings.seed
    )
    return {
        "variant": head.row["variant"],
        "rows": points,
        "extrapolation": extrapolation(points),
        "evaluated_on": evaluated_on,
    }


def headline_curve(
    evaluation: dict, heads_dir: Path, records: Sequence[Record], settings: DiagnoseParams, *, cv: int
) -> dict:
    """The learning curve's sentence for the overall choice (its best single feature set), for the leaderboard.

    The same computation as the diagnose stage's curve of that feature set, so
    the two say the same; ``feature_set``, ``variant``, ``sentence``,
    ``evaluated_on``.
    """
    chosen = load_chosen(chosen_heads(evaluation, heads_dir))
    key = best_feature_set(evaluation, chosen)
    head = chosen[key]
    with threadpool_limits(limits=1):  # as diagnose() runs it
        curve = curve_of(head, head.features("train", records), head.features("val", records), settings, cv)
    return {
        "feature_set": key,
        "variant": curve["variant"],
        "sentence": curve["extrapolation"]["sentence"],
        "evaluated_on": curve["evaluated_on"],
    }


def _out_of_fold_proba(
    heads: Sequence[ChosenHead], records: Sequence[Record], settings: DiagnoseParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[str]]:
    """Train+val ids, labels and out-of-fold probabilities of one head or of an ensemble's mean, train rows first.

    Every head is refitted on the same stratified folds (they depend only on
    the labels and ``diagnose.seed``), each on its own store's rows.
    """
    probas, reference = [], None
    for head in heads:
        train, val = head.features("train", records), head.features("val", records)
        ids = np.concatenate([train.ids, val.ids])
        y = np.concatenate([train.y, val.y])
        if reference is not None and not np.array_equal(ids, reference[0]):
            raise ValueError(
                f"the ensemble's stores list train+val images in different orders "
                f"({head.feature_set} against {heads[0].feature_set}); run `dvc repro` so that every store "
                "covers the manifest"
            )
        X = np.concatenate([np.asarray(train.X), np.asarray(val.X)])
        probas.append(cross_val_proba(head.estimator, X, y, len(train.classes), settings.label_folds, settings.seed))
        reference = reference or (ids, y, len(train.y), list(train.classes))
    ids, y, n_train, classes = reference
    return ids, y, np.mean(probas, axis=0), n_train, classes


def _label_folds(y: np.ndarray, settings: DiagnoseParams) -> int:
    """The folds :func:`cross_val_proba` used: ``diagnose.label_folds``, fewer when a class has fewer images."""
    return min(settings.label_folds, int(np.bincount(y)[np.unique(y)].min()))


def _with_out_of_fold(predictions: Predictions, ids: np.ndarray, proba: np.ndarray) -> Predictions:
    """``predictions`` (val) with each image's out-of-fold probabilities, matched by image id."""
    row_of = {image_id: i for i, image_id in enumerate(ids)}
    missing = [r.id for r in predictions.records if r.id not in row_of]
    if missing:
        raise ValueError(
            f"{len(missing)} val image(s) have no out-of-fold prediction (e.g. {missing[0]}); "
            "rerun `dvc repro` so that every store covers the manifest"
        )
    rows = [row_of[r.id] for r in predictions.records]
    return dataclasses.replace(predictions, proba=proba[rows])


def _short(model: str) -> str:
    """The model's name without its parenthesised explanation (sheet titles are one line)."""
    return model.split(" (", 1)[0]


def _caption(row: dict) -> list[str]:
    split = "val (oof)" if row.get("out_of_fold") else row["split"]
    return [f"true {row['true']}", f"pred {row['predicted']}", f"{row['confidence']:.2f} · {split}"]


def diagnose(
    replayed: dict,
    records: Sequence[Record],
    settings: DiagnoseParams,
    *,
    cv: int,
    max_pixels: int,
    out: Path,
    pages: dict[str, Path],
) -> dict:
    """Everything the diagnose stage writes (see the module docstring); returns ``summary.json``'s content.

    Its matrices are small (hundreds of rows) and its fits many, so BLAS and
    OpenMP run on one thread: on a busy 2-core machine their spinning threads
    made the t-SNE maps and the learning curves 10-20 times slower in wall time
    (BENCHMARKS.md, "The diagnose stage").

    Parameters
    ----------
    replayed : dict
        ``reports/chosen_heads.json`` (:func:`pipeline.diagnosis.chosen.chosen_heads`): which variant each
        feature set chose and the overall best, with their rows, stores and head folders.
    records : sequence of Record
        The manifest.
    settings : DiagnoseParams
    cv : int
        ``heads.cv``: 0 scores the learning curve on val, k >= 2 on k folds of train+val.
    max_pixels : int
        ``data.max_image_pixels`` for decoding the thumbnails' images.
    out : Path
        Folder of the data, sheets and thumbnails.
    pages : dict
        Paths of the ``errors``, ``label_issues`` and ``learning_curve`` Markdown pages.
    """
    with threadpool_limits(limits=1):
        return _diagnose(replayed, records, settings, cv=cv, max_pixels=max_pixels, out=out, pages=pages)


def _diagnose(
    replayed: dict,
    records: Sequence[Record],
    settings: DiagnoseParams,
    *,
    cv: int,
    max_pixels: int,
    out: Path,
    pages: dict[str, Path],
) -> dict:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    chosen = load_chosen(replayed)
    best_key = best_feature_set(replayed, chosen)
    best = chosen[best_key]
    members = load_ensemble(replayed)
    overall = replayed["best"]
    # Label issues are the ensemble's when it is the choice; a combination (several stores side by side) is not
    # replayed: the best single feature set's head stands in for it.
    single = f"{best_key} / {best.row['variant']}"
    if members is not None:
        model = (
            f"{overall['feature_set']} / {overall['variant']} (the overall choice on validation: the mean "
            f"probabilities of {', '.join(overall['members'])})"
        )
    elif best_key == overall["feature_set"]:
        model = f"{single} (the overall choice on validation)"
    else:
        model = (
            f"{single} (the best single feature set; the overall choice, {overall['feature_set']} / "
            f"{overall['variant']}, reads several stores side by side and is not replayed here)"
        )
    thumbs = out / "thumbs"
    seconds["load"] = time.perf_counter() - start

    # -- out-of-fold probabilities on train+val of the chosen model (an ensemble's members each on their own
    #    store, their probabilities averaged as the ensemble averages them): label issues, and val's errors under CV
    start = time.perf_counter()
    heads = members or [best]
    ids, y, proba, n_train, classes = _out_of_fold_proba(heads, records, settings)
    seconds["out_of_fold"] = time.perf_counter() - start

    # -- the chosen model's predictions, its errors and its least confident correct images
    start = time.perf_counter()
    if members is not None:
        predictions = predict_ensemble(members, records)
        name = (overall["feature_set"], overall["variant"])
    else:
        predictions = predict_splits(best, records)
        name = (best_key, best.row["variant"])
    # Selected by k-fold CV, the final heads were refitted on train+val: their val predictions are in-sample.
    # Val is shown as each image's out-of-fold prediction instead (the head refitted without its fold).
    out_of_fold = bool(heads[0].cv)
    if out_of_fold:
        predictions = [_with_out_of_fold(p, ids, proba) if p.split == "val" else p for p in predictions]
    rows = prediction_rows(predictions, *name)
    for row in rows:
        row["out_of_fold"] = out_of_fold and row["split"] == "val"
    write_csv(rows, out / "predictions.csv")
    by_id = {r.id: r for r in records}
    wrong = sorted((r for r in rows if not r["correct"]), key=lambda r: (-r["confidence"], r["id"]))
    unsure = sorted((r for r in rows if r["correct"]), key=lambda r: (r["confidence"], r["id"]))[: settings.gallery]
    shown = wrong[: settings.gallery]
    for row in (*shown, *unsure):
        row["thumb"] = write_thumbnail(by_id[row["id"]], thumbs, settings.thumb_px, max_pixels)
    sheets = {
        "errors": contact_sheet(
            [(r["thumb"], _caption(r)) for r in shown],
            out / "errors.jpg",
            size=settings.thumb_px,
            empty="no val or test image is misclassified",
            title=f"Misclassified val/test images of {_short(model)} ({len(wrong)}), most confident first",
        ),
        "least_confident": contact_sheet(
            [(r["thumb"], _caption(r)) for r in unsure],
            out / "least_confident.jpg",
            size=settings.thumb_px,
            empty="no correct val or test image",
            title=f"Least confident correct val/test images of {_short(model)}",
        ),
    }
    pairs = confused_pairs(predictions, TOP_PAIRS)
    val_note = (
        f"Val images: out-of-fold predictions ({_label_folds(y, settings)}-fold, `diagnose.label_folds`), "
        f"since the final head was refitted on train+val after its {heads[0].cv}-fold CV selection; "
        "test: the final head's."
        if out_of_fold
        else "Val and test: the final head's predictions (it was fitted on train)."
    )
    write_text_atomically(
        pages["errors"],
        errors_page(
            pages["errors"], model, shown, len(wrong), pairs, unsure, out / "predictions.csv", sheets, val_note
        ),
    )
    seconds["errors"] = time.perf_counter() - start

    # -- likely label mistakes: from the out-of-fold probabilities above
    start = time.perf_counter()
    quality, flagged = rank_label_issues(y, proba)
    order = np.argsort(quality, kind="stable")
    ranked = [
        {
            "rank": rank + 1,
            "id": ids[i],
            "path": by_id[ids[i]].path,
            "split": "train" if i < n_train else "val",
            "given": classes[y[i]],
            "suggested": classes[int(proba[i].argmax())],
            "quality": round(float(quality[i]), 4),
            "flagged": bool(flagged[i]),
        }
        for rank, i in enumerate(order)
    ]
    write_csv(ranked, out / "label_issues.csv")
    listed = [r for r in ranked if r["flagged"]][: settings.gallery]
    for row in listed:
        row["thumb"] = write_thumbnail(by_id[row["id"]], thumbs, settings.thumb_px, max_pixels)
    sheets["label_issues"] = contact_sheet(
        [
            (r["thumb"], [f"given {r['given']}", f"looks {r['suggested']}", f"quality {r['quality']:.2f}"])
            for r in listed
        ],
        out / "label_issues.jpg",
        size=settings.thumb_px,
        title=f"Likely label mistakes ({int(flagged.sum())} flagged), worst first",
        empty="no image is flagged",
    )
    write_text_atomically(
        pages["label_issues"],
        label_issues_page(
            pages["label_issues"],
            single if members is None else _short(model),
            listed,
            int(flagged.sum()),
            len(y),
            _label_folds(y, settings),
            out / "label_issues.csv",
            sheets["label_issues"],
        ),
    )
    suspects = {r["id"] for r in ranked if r["flagged"]}
    seconds["label_issues"] = time.perf_counter() - start

    # -- per feature set: the learning curve and the map
    curves, curve_rows, map_rows = {}, [], []
    seconds["learning_curve"] = seconds["map"] = 0.0
    for key, head in chosen.items():
        split_sets = {split: head.features(split, records) for split in ("train", "val", "test")}
        start = time.perf_counter()
        curves[key] = curve_of(head, split_sets["train"], split_sets["val"], settings, cv)
        evaluated_on = curves[key]["evaluated_on"]
        curve_rows += [{"feature_set": key, **p} for p in curves[key]["rows"]]
        log.info("%s: learning curve %s", key, curves[key]["extrapolation"]["sentence"])
        seconds["learning_curve"] += time.perf_counter() - start

        start = time.perf_counter()
        X_all = np.concatenate([np.asarray(s.X) for s in split_sets.values()])
        coords = project(X_all, max_iter=settings.map_max_iter, seed=settings.seed)
        offset = 0
        for split, fs in split_sets.items():
            guesses = head.estimator.predict(np.asarray(fs.X)) if split != "train" and len(fs.y) else fs.y
            for i, (image_id, label, guess) in enumerate(zip(fs.ids, fs.y, guesses)):
                status = (
                    "suspected label issue" if image_id in suspects else "misclassified" if guess != label else "ok"
                )
                x, y_coord = coords[offset + i]
                map_rows.append(
                    {
                        "feature_set": key,
                        "x": round(float(x), 3),
                        "y": round(float(y_coord), 3),
                        "class": fs.classes[label],
                        "split": split,
                        "status": status,
                        "id": image_id,
                    }
                )
            offset += len(fs.y)
        seconds["map"] += time.perf_counter() - start
    write_csv(curve_rows, out / "learning_curve.csv")
    write_csv(map_rows, out / "map.csv")
    write_text_atomically(pages["learning_curve"], learning_curve_page(curves, evaluated_on))

    summary = {
        "model": model,
        "val_test_images": len(rows),
        "misclassified": len(wrong),
        "label_issues_flagged": int(flagged.sum()),
        "label_issues_ranked": len(y),
        "learning_curve": {k: c["extrapolation"] for k, c in curves.items()},
        "learning_curve_evaluated_on": evaluated_on,
        "map": "t-SNE (scikit-learn) after PCA to 50",
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
