"""Stage evaluate: choose the best head per feature set on validation, score it once on test.

Reads  every ``heads/<key>/scores.json`` and the chosen fitted heads, the test
       split of each feature store, ``--costs`` (the backbone timings of
       stage backbone_cost), ``--finetune`` (the fine-tune stage's result, which
       joins the leaderboard and the overall choice) and ``params.yaml`` sections
       ``evaluate`` and ``export.variant``.
Writes ``--metrics`` (``metrics.json``, the headline for ``dvc metrics show`` and
       ``dvc exp show``: the overall best and each feature set's chosen variant
       with validation and test accuracy, macro-F1 and a bootstrap 95% interval
       on test accuracy); ``--report`` (the same in full, with per-class recall
       and the cost report); ``--cost`` (the cost report alone: how long the
       sweep took and what its variants would have cost end to end through the
       backbone); ``--leaderboard`` (CSV of every variant, test scores only for
       the chosen ones) and a Markdown twin; ``--plots`` folder with the data
       of every ``dvc plots`` plot (see :mod:`pipeline.sweep_report`);
       ``--export-target`` (what the export stage exports: the best head on
       cached features, or the one ``export.variant`` names).

Only the variant chosen on validation (or by cross-validation on train+val,
with ``heads.cv``) is ever scored on test, so the reported test numbers are not
themselves selected on test; the overall best is chosen on validation too.
Loading the chosen heads imports no TensorFlow (see :mod:`pipeline.dense_head`).

Usage: ``python -m pipeline.evaluate --heads heads --metrics metrics.json --report reports/evaluation.json
--leaderboard reports/leaderboard.csv --plots plots [--costs reports/backbone_cost.json --cost reports/cost.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import joblib
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

from pipeline.config import EvaluateParams, load_params
from pipeline.cost import end_to_end_seconds
from pipeline.stage import run_stage
from pipeline.heads import predict_views
from pipeline.store import open_feature_set
from pipeline.views import open_views, views_path
from pipeline.sweep_report import leaderboard_markdown, write_csv, write_plots
from pipeline.train_heads import SCORES_FILE

log = logging.getLogger(__name__)


def load_scores(heads_dir: Path) -> list[dict]:
    """Every feature set's ``scores.json`` under ``heads_dir``, sorted by feature set."""
    files = sorted(Path(heads_dir).glob(f"*/{SCORES_FILE}"))
    if not files:
        raise FileNotFoundError(f"no {SCORES_FILE} under {heads_dir}/; run the heads stages first")
    return [json.loads(f.read_text(encoding="utf-8")) | {"dir": str(f.parent)} for f in files]


def rank(row: dict, select_by: str) -> tuple:
    """Sort key, best first: the validation score, then the other metric, then the faster fit."""
    other = "macro_f1" if select_by == "accuracy" else "accuracy"
    return (-(row.get(f"val_{select_by}") or 0.0), -(row.get(f"val_{other}") or 0.0),
            row.get("fit_seconds") or 0.0, row.get("feature_set", ""), row["variant"])


def select_best(rows: Sequence[dict], select_by: str) -> dict:
    """The row with the best validation score; ties go to the other metric, then the faster fit."""
    scored = [r for r in rows if r.get(f"val_{select_by}") is not None]
    if not scored:
        raise ValueError("no variant has a validation score (is the validation split empty?)")
    return min(scored, key=lambda r: rank(r, select_by))


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, *, n_resamples: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy over resampled test images.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n_samples,)
    n_resamples : int
    seed : int

    Returns
    -------
    (low, high) : tuple of float
    """
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)
    if len(correct) == 0 or n_resamples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(n_resamples, len(correct)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def score_test(estimator, X: np.ndarray, y: np.ndarray, classes: Sequence[str], settings: EvaluateParams) -> dict:
    """Accuracy, macro-F1, per-class recall and a bootstrap interval of one head on test."""
    predicted = predict_views(estimator, X)
    low, high = bootstrap_ci(y, predicted, n_resamples=settings.bootstrap, seed=settings.seed)
    labels = list(range(len(classes)))
    recall = recall_score(y, predicted, labels=labels, average=None, zero_division=0)
    return {
        "test_accuracy": float(accuracy_score(y, predicted)),
        "test_accuracy_ci95": [round(low, 4), round(high, 4)],
        "test_macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "test_recall": {name: float(r) for name, r in zip(classes, recall)},
        "test_images": int(len(y)),
        "predicted": predicted,
    }


def evaluate(heads_dir: Path, settings: EvaluateParams,
             costs: Optional[dict] = None) -> tuple[dict, list[dict], dict]:
    """Select per feature set, score the selections on test, pick the overall best on validation.

    Parameters
    ----------
    heads_dir : Path
        Holds ``<key>/scores.json`` and the fitted heads.
    settings : EvaluateParams
    costs : dict, optional
        Backbone timings by feature set (stage backbone_cost); adds ``cost`` to the report.

    Returns
    -------
    report : dict
        Everything about the selections (:func:`headline` condenses it for ``metrics.json``).
    leaderboard : list of dict
        One row per variant over all feature sets, best validation score first.
    best : dict
        The overall best selection with its test labels and predictions, for plots.
    """
    chosen, leaderboard = {}, []
    all_scores = load_scores(heads_dir)
    for scores in all_scores:
        key, provenance = scores["feature_set"], scores["provenance"]
        pick = select_best(scores["variants"], settings.select_by)
        expect = {"manifest_sha256": provenance["manifest_sha256"], "cut": provenance["cut"],
                  "weights": provenance["weights"]}
        test = open_feature_set(scores["store"], "test", pooling=pick["pooling"], expect=expect)
        X_test = test.X
        if pick.get("tta"):
            # Test-time augmentation: the clean features and every cached view of each test image.
            views = open_views(views_path(Path(scores["store"]).parent, key), "test", pooling=pick["pooling"],
                               expect=expect)
            X_test = np.concatenate([test.X[:, None], views.X], axis=1)
        estimator = joblib.load(Path(scores["dir"]) / f"{pick['variant']}.joblib")
        result = score_test(estimator, X_test, test.y, test.classes, settings)
        chosen[key] = {"pick": pick, "result": result, "provenance": provenance, "y": test.y,
                       "classes": test.classes}
        log.info("%s: chose %s (val %s %.4f) → test accuracy %.4f", key, pick["variant"], settings.select_by,
                 pick[f"val_{settings.select_by}"], result["test_accuracy"])
        for row in scores["variants"]:
            selected = row["variant"] == pick["variant"]
            leaderboard.append({
                "feature_set": key, "backbone": provenance["backbone"], "weights": provenance["weights"],
                "cut": provenance["cut"], "variant": row["variant"], "kind": row["kind"],
                "pooling": row["pooling"], "standardize": row.get("standardize", True), "pca": row.get("pca"),
                "augment": row.get("augment", "none"), "tta": row.get("tta", False),
                "params": row.get("params", {}), "val_accuracy": row["val_accuracy"],
                "val_macro_f1": row["val_macro_f1"], "val_accuracy_std": row.get("val_accuracy_std"),
                "test_accuracy": result["test_accuracy"] if selected else None,
                "fit_seconds": row["fit_seconds"], "peak_rss_mib": row.get("peak_rss_mib"),
                "n_epochs": row.get("n_epochs"), "selected": selected,
            })
    best_key = min(chosen, key=lambda k: rank({**chosen[k]["pick"], "feature_set": k}, settings.select_by))
    leaderboard.sort(key=lambda r: rank(r, settings.select_by))
    report = {
        "best": _summary(best_key, chosen[best_key]),
        "feature_sets": {k: _summary(k, c) for k, c in sorted(chosen.items())},
        "variants_trained": len(leaderboard),
        "selected_by": f"{_selection(all_scores)} {settings.select_by}",
        "cost": None if costs is None else sweep_cost(all_scores, costs,
                                                      {k: len(c["y"]) for k, c in chosen.items()}),
    }
    return report, leaderboard, {"key": best_key, **chosen[best_key]}


def _selection(all_scores: Sequence[dict]) -> str:
    schemes = sorted({row.get("selection", "val split") for s in all_scores for row in s["variants"]})
    return " / ".join(f"validation ({scheme})" for scheme in schemes)


def sweep_cost(all_scores: Sequence[dict], costs: dict, test_rows: dict[str, int]) -> dict:
    """How long the sweep took, and what its variants would cost end to end through the backbone.

    Parameters
    ----------
    all_scores : sequence of dict
        The ``scores.json`` of every feature set.
    costs : dict
        ``{key: {"seconds_per_image": ...}}`` from stage backbone_cost.
    test_rows : dict
        Test images per feature set (for the one-off extraction cost).

    Returns
    -------
    dict
        ``variants``, ``fitted`` and ``reused`` (this run of the heads stages),
        ``heads_stage_seconds`` (their wall time, imports included),
        ``fit_seconds`` (fitting time of every variant, reused ones as first
        fitted), ``end_to_end_seconds`` (:func:`pipeline.cost.end_to_end_seconds`
        summed over feature sets), ``extraction_seconds`` (the backbone once over
        every image), ``seconds_per_image_mean``, ``end_to_end_over_fit`` (how
        many times the fitting time end to end would take) and the
        per-feature-set numbers.

    Raises
    ------
    ValueError
        If a feature set has no backbone timing.
    """
    per_set, totals = {}, dict.fromkeys(("variants", "fitted", "reused"), 0)
    for scores in all_scores:
        key, rows, sweep = scores["feature_set"], scores["variants"], scores.get("sweep", {})
        if key not in costs:
            raise ValueError(f"no backbone timing for feature set {key!r} in the costs file "
                             f"(it has {sorted(costs)}); rerun stage backbone_cost")
        seconds_per_image = costs[key]["seconds_per_image"]
        n = scores["rows"]
        per_set[key] = {
            "variants": len(rows), "fitted": sweep.get("fitted", len(rows)), "reused": sweep.get("reused", 0),
            "heads_stage_seconds": sweep.get("stage_seconds"),
            "fit_seconds": round(sum(r["fit_seconds"] + r.get("preprocess_seconds", 0.0) for r in rows), 3),
            "seconds_per_image": seconds_per_image,
            "end_to_end_seconds": round(end_to_end_seconds(rows, seconds_per_image=seconds_per_image,
                                                           n_train=n["train"], n_val=n["val"],
                                                           cv=sweep.get("cv", 0)), 1),
            "extraction_seconds": round(seconds_per_image * (n["train"] + n["val"] + test_rows[key]), 1),
        }
        for name in totals:
            totals[name] += per_set[key][name]
    sums = {name: round(sum(p[name] or 0.0 for p in per_set.values()), 3)
            for name in ("heads_stage_seconds", "fit_seconds", "end_to_end_seconds", "extraction_seconds")}
    mean_spi = float(np.mean([p["seconds_per_image"] for p in per_set.values()]))
    ratio = sums["end_to_end_seconds"] / sums["fit_seconds"] if sums["fit_seconds"] else None
    return {**totals, **sums, "seconds_per_image_mean": mean_spi,
            "end_to_end_over_fit": None if ratio is None else round(ratio, 1), "feature_sets": per_set}


def _summary(key: str, chosen: dict) -> dict:
    result, pick, provenance = chosen["result"], chosen["pick"], chosen["provenance"]
    return {
        "feature_set": key, "variant": pick["variant"], "backbone": provenance["backbone"],
        "weights": provenance["weights"], "cut": provenance["cut"],
        "cut_depth": round(provenance["cut_index"] / max(1, provenance["n_layers"] - 1), 4),
        "val_accuracy": pick["val_accuracy"], "val_macro_f1": pick["val_macro_f1"],
        **{k: v for k, v in result.items() if k != "predicted"},
    }


def headline(report: dict) -> dict:
    """The few numbers ``dvc metrics show`` and ``dvc exp show`` should put side by side."""
    def short(summary: dict) -> dict:
        low, high = summary["test_accuracy_ci95"]
        return {"val_accuracy": summary["val_accuracy"], "test_accuracy": summary["test_accuracy"],
                "test_ci95_low": low, "test_ci95_high": high, "test_macro_f1": summary["test_macro_f1"]}

    best = report["best"]
    return {"best": {"feature_set": best["feature_set"], "variant": best["variant"], **short(best)},
            **{key: short(summary) for key, summary in report["feature_sets"].items()},
            **({"finetune": short(report["finetune"])} if report.get("finetune") else {}),
            "variants_trained": report["variants_trained"]}


def add_finetune(report: dict, leaderboard: list[dict], result: dict, select_by: str) -> None:
    """Put the fine-tune stage's result on the leaderboard and into the overall choice (on validation)."""
    if not result.get("enabled"):
        return
    summary = {"feature_set": result["feature_set"], "variant": f"finetune-{result['head_variant']}",
               "kind": "finetune", "val_accuracy": result["val_accuracy"], "val_macro_f1": result["val_macro_f1"],
               **{k: result[k] for k in ("test_accuracy", "test_accuracy_ci95", "test_macro_f1", "test_images")},
               "kept": result["kept"], "epochs_run": result["epochs_run"], "unfrozen_layers": result["unfrozen_layers"]}
    report["finetune"] = summary
    head_row = next(r for r in leaderboard
                    if r["feature_set"] == result["feature_set"] and r["variant"] == result["head_variant"])
    leaderboard.append({**head_row, "variant": summary["variant"], "kind": "finetune", "params": {},
                        "val_accuracy": result["val_accuracy"], "val_macro_f1": result["val_macro_f1"],
                        "val_accuracy_std": None, "test_accuracy": result["test_accuracy"],
                        "fit_seconds": result["seconds"], "peak_rss_mib": None, "n_epochs": result["epochs_run"],
                        "selected": True})
    leaderboard.sort(key=lambda r: rank(r, select_by))
    best = report["best"]
    if (summary[f"val_{select_by}"], summary["feature_set"]) > (best[f"val_{select_by}"], best["feature_set"]):
        report["best_cached_head"] = best
        report["best"] = {**best, **summary}
        log.info("best overall: fine-tuning %s (val %s %.4f) → test accuracy %.4f", result["feature_set"],
                 select_by, summary[f"val_{select_by}"], summary["test_accuracy"])


def export_target(report: dict, leaderboard: Sequence[dict], heads_dir: Path, requested: Optional[str]) -> dict:
    """What the export stage exports: the best head on cached features, or the one ``export.variant`` names.

    Everything the export and its model card need is here (the head file and its
    sha256, the store, the score row, the test result if the head was scored,
    the runners-up), so that the export stage reruns only when these change.
    """
    import hashlib

    best = report.get("best_cached_head", report["best"])
    key, variant = requested.split("/", 1) if requested else (best["feature_set"], best["variant"])
    scores_file = heads_dir / key / SCORES_FILE
    if not scores_file.is_file():
        raise ValueError(f"export.variant names feature set {key!r}, which has no heads in {heads_dir}/")
    scores = json.loads(scores_file.read_text(encoding="utf-8"))
    rows = {row["variant"]: row for row in scores["variants"]}
    if variant not in rows:
        raise ValueError(f"no variant {variant!r} in {heads_dir}/{key}. Known, best first: "
                         + ", ".join(r["variant"] for r in leaderboard if r["feature_set"] == key)[:2000])
    head = heads_dir / key / f"{variant}.joblib"
    summary = report["feature_sets"][key]
    runners_up = [{k: r.get(k) for k in ("feature_set", "variant", "kind", "val_accuracy", "test_accuracy")}
                  for r in leaderboard if not (r["feature_set"] == key and r["variant"] == variant)][:5]
    return {"feature_set": key, "variant": variant,
            "chosen": "named by export.variant" if requested else "best on validation among cached-feature heads",
            "head": str(head), "head_sha256": hashlib.sha256(head.read_bytes()).hexdigest(),
            "store": scores["store"], "provenance": scores["provenance"], "row": rows[variant],
            "test": summary if summary["variant"] == variant else None,
            "finetune": report.get("finetune"), "runners_up": runners_up}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", required=True, type=Path, help="folder holding heads/<key>/scores.json")
    parser.add_argument("--metrics", required=True, type=Path, help="headline metrics JSON")
    parser.add_argument("--report", required=True, type=Path, help="full evaluation JSON")
    parser.add_argument("--leaderboard", required=True, type=Path, help="CSV; a .md twin is written beside it")
    parser.add_argument("--plots", required=True, type=Path, help="folder for dvc plots data")
    parser.add_argument("--costs", type=Path, help="backbone timings (stage backbone_cost), for the cost report")
    parser.add_argument("--cost", type=Path, help="where to write the cost report (needs --costs)")
    parser.add_argument("--finetune", type=Path, help="the fine-tune stage's result.json, joined to the leaderboard")
    parser.add_argument("--export-target", type=Path, help="where to write what the export stage exports")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    if args.cost is not None and args.costs is None:
        raise ValueError(f"--cost {args.cost} needs --costs (the backbone timings of stage backbone_cost)")
    params = load_params(args.params)
    settings = params.evaluate
    costs = None
    if args.costs is not None:
        if not args.costs.is_file():
            raise FileNotFoundError(f"no backbone timings at {args.costs}; run stage backbone_cost first")
        costs = json.loads(args.costs.read_text(encoding="utf-8"))
    report, leaderboard, best = evaluate(args.heads, settings, costs)
    if args.finetune is not None:
        if not args.finetune.is_file():
            raise FileNotFoundError(f"no fine-tune result at {args.finetune}; run stage finetune first")
        add_finetune(report, leaderboard, json.loads(args.finetune.read_text(encoding="utf-8")), settings.select_by)
    outputs = [(args.report, report), (args.metrics, headline(report))]
    if args.export_target is not None:
        outputs.append((args.export_target, export_target(report, leaderboard, args.heads, params.export.variant)))
    if args.cost is not None:
        # Flat, so that `dvc metrics show` and `dvc exp show` get a few columns (the full report has the rest).
        outputs.append((args.cost, {k: v for k, v in report["cost"].items() if k != "feature_sets"}))
    for path, content in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    write_csv([{k: v for k, v in row.items() if k != "params"} for row in leaderboard], args.leaderboard)
    args.leaderboard.with_suffix(".md").write_text(leaderboard_markdown(leaderboard, report), encoding="utf-8")
    write_plots(args.plots, report, leaderboard, best)
    b = report["best"]
    log.info("best: %s / %s, test accuracy %.4f (95%% CI %s)", b["feature_set"], b["variant"],
             b["test_accuracy"], b["test_accuracy_ci95"])
    if report["cost"]:
        c = report["cost"]
        log.info("sweep: %d variants, heads stages %.1f s wall (%d fitted, %d reused), %.1f s of fitting; "
                 "end to end through the backbone they would take ~%.0f s (%.1f ms/image); extracting "
                 "the features once ~%.0f s", c["variants"], c["heads_stage_seconds"], c["fitted"], c["reused"],
                 c["fit_seconds"], c["end_to_end_seconds"], 1000 * c["seconds_per_image_mean"],
                 c["extraction_seconds"])


if __name__ == "__main__":
    run_stage(main)
