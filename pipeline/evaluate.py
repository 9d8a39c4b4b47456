"""Stage evaluate: choose the best head per feature set on validation, score it once on test.

Reads  every ``heads/<key>/scores.json`` and the chosen fitted heads, the test
       split of each feature store, and ``params.yaml`` section ``evaluate``.
Writes ``--metrics`` (``metrics.json``, the headline for ``dvc metrics show``:
       the overall best and each feature set's chosen variant with validation
       and test accuracy, macro-F1 and a bootstrap 95% interval on test accuracy);
       ``--report`` (the same in full, with per-class recall);
       ``--leaderboard`` (CSV of every variant, test scores only for the chosen
       ones) and a Markdown twin; ``--plots`` folder with ``confusion.csv``
       (best model), ``accuracy_by_cut.csv`` and ``leaderboard.csv`` for ``dvc plots``.

Only the variant chosen on validation is ever scored on test, so the reported
test numbers are not themselves selected on test.

Usage: ``python -m pipeline.evaluate --heads heads --metrics metrics.json --report reports/evaluation.json
--leaderboard reports/leaderboard.csv --plots plots``
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Sequence

import joblib
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

from pipeline.stage import run_stage
from pipeline.config import EvaluateParams, load_params
from pipeline.store import open_feature_set
from pipeline.train_heads import SCORES_FILE

log = logging.getLogger(__name__)


def load_scores(heads_dir: Path) -> list[dict]:
    """Every feature set's ``scores.json`` under ``heads_dir``, sorted by feature set."""
    files = sorted(Path(heads_dir).glob(f"*/{SCORES_FILE}"))
    if not files:
        raise FileNotFoundError(f"no {SCORES_FILE} under {heads_dir}/; run the heads stages first")
    return [json.loads(f.read_text(encoding="utf-8")) | {"dir": str(f.parent)} for f in files]


def select_best(rows: Sequence[dict], select_by: str) -> dict:
    """The row with the best validation score; ties go to the other metric, then the faster fit."""
    other = "macro_f1" if select_by == "accuracy" else "accuracy"
    scored = [r for r in rows if r.get(f"val_{select_by}") is not None]
    if not scored:
        raise ValueError("no variant has a validation score (is the validation split empty?)")
    return max(scored, key=lambda r: (r[f"val_{select_by}"], r.get(f"val_{other}") or 0.0,
                                      -r["fit_seconds"], r["variant"]))


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
    predicted = estimator.predict(X)
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


def evaluate(heads_dir: Path, settings: EvaluateParams) -> tuple[dict, list[dict], dict]:
    """Select per feature set, score the selections on test, pick the overall best on validation.

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
    for scores in load_scores(heads_dir):
        key, provenance = scores["feature_set"], scores["provenance"]
        pick = select_best(scores["variants"], settings.select_by)
        test = open_feature_set(scores["store"], "test", pooling=pick["pooling"],
                                expect={"manifest_sha256": provenance["manifest_sha256"],
                                        "cut": provenance["cut"], "weights": provenance["weights"]})
        estimator = joblib.load(Path(scores["dir"]) / f"{pick['variant']}.joblib")
        result = score_test(estimator, test.X, test.y, test.classes, settings)
        chosen[key] = {"pick": pick, "result": result, "provenance": provenance, "y": test.y,
                       "classes": test.classes}
        log.info("%s: chose %s (val %s %.4f) → test accuracy %.4f", key, pick["variant"], settings.select_by,
                 pick[f"val_{settings.select_by}"], result["test_accuracy"])
        for row in scores["variants"]:
            selected = row["variant"] == pick["variant"]
            leaderboard.append({
                "feature_set": key, "backbone": provenance["backbone"], "weights": provenance["weights"],
                "cut": provenance["cut"], "variant": row["variant"], "kind": row["kind"],
                "pooling": row["pooling"], "val_accuracy": row["val_accuracy"],
                "val_macro_f1": row["val_macro_f1"],
                "test_accuracy": result["test_accuracy"] if selected else None,
                "fit_seconds": row["fit_seconds"], "selected": selected,
            })
    best_key = max(chosen, key=lambda k: (chosen[k]["pick"][f"val_{settings.select_by}"], k))
    leaderboard.sort(key=lambda r: (-(r[f"val_{settings.select_by}"] or 0.0), r["feature_set"], r["variant"]))
    report = {
        "best": _summary(best_key, chosen[best_key]),
        "feature_sets": {k: _summary(k, c) for k, c in sorted(chosen.items())},
        "variants_trained": len(leaderboard),
        "selected_by": f"validation {settings.select_by}",
    }
    return report, leaderboard, {"key": best_key, **chosen[best_key]}


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
            "variants_trained": report["variants_trained"]}


def leaderboard_markdown(rows: Sequence[dict], report: dict) -> str:
    """The leaderboard as a Markdown page for humans."""
    best = report["best"]
    low, high = best["test_accuracy_ci95"]
    lines = ["# Leaderboard", "",
             f"Best on {report['selected_by']}: **{best['feature_set']} / {best['variant']}** — "
             f"test accuracy **{best['test_accuracy']:.4f}** (95% CI {low:.4f}–{high:.4f}), "
             f"macro-F1 {best['test_macro_f1']:.4f}, on {best['test_images']} test images.", "",
             "Test scores are shown only for the variant chosen on validation in each feature set (✓).", "",
             "| # | feature set | cut | variant | val acc | val macro-F1 | test acc | fit s |",
             "|---:|---|---|---|---:|---:|---:|---:|"]
    for rank, row in enumerate(rows, 1):
        test = f"{row['test_accuracy']:.4f} ✓" if row["selected"] else ""
        lines.append(f"| {rank} | {row['feature_set']} | {row['cut']} | {row['variant']} | "
                     f"{_num(row['val_accuracy'])} | {_num(row['val_macro_f1'])} | {test} | {row['fit_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "" if value is None else f"{value:.4f}"


def write_csv(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_plots(plots: Path, report: dict, leaderboard: Sequence[dict], best: dict) -> None:
    """CSV data for ``dvc plots``: confusion matrix, accuracy per cut, leaderboard bars."""
    classes = best["classes"]
    write_csv([{"actual": classes[a], "predicted": classes[p]}
               for a, p in zip(best["y"], best["result"]["predicted"])], plots / "confusion.csv")
    by_cut = [{"feature_set": key, "backbone": f"{s['backbone']} ({s['weights']})", "cut": s["cut"],
               "cut_depth": s["cut_depth"], "val_accuracy": s["val_accuracy"], "test_accuracy": s["test_accuracy"]}
              for key, s in report["feature_sets"].items()]
    write_csv(sorted(by_cut, key=lambda r: (r["backbone"], r["cut_depth"])), plots / "accuracy_by_cut.csv")
    write_csv([{"variant": f"{r['feature_set']}/{r['variant']}", "val_accuracy": r["val_accuracy"]}
               for r in leaderboard], plots / "leaderboard.csv")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", required=True, type=Path, help="folder holding heads/<key>/scores.json")
    parser.add_argument("--metrics", required=True, type=Path, help="headline metrics JSON")
    parser.add_argument("--report", required=True, type=Path, help="full evaluation JSON")
    parser.add_argument("--leaderboard", required=True, type=Path, help="CSV; a .md twin is written beside it")
    parser.add_argument("--plots", required=True, type=Path, help="folder for dvc plots data")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    settings = load_params(args.params).evaluate
    report, leaderboard, best = evaluate(args.heads, settings)
    for path, content in ((args.report, report), (args.metrics, headline(report))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    write_csv(leaderboard, args.leaderboard)
    args.leaderboard.with_suffix(".md").write_text(leaderboard_markdown(leaderboard, report), encoding="utf-8")
    write_plots(args.plots, report, leaderboard, best)
    b = report["best"]
    log.info("best: %s / %s, test accuracy %.4f (95%% CI %s)", b["feature_set"], b["variant"],
             b["test_accuracy"], b["test_accuracy_ci95"])


if __name__ == "__main__":
    run_stage(main)
