"""What the evaluate stage writes for people and for ``dvc plots``: leaderboard, plot data, cost.

Plot data (CSV, one file per plot declared at the top of ``dvc.yaml``):

* ``leaderboard.csv`` — every variant's validation accuracy (bar chart);
* ``accuracy_by_cut.csv`` — the chosen variant's accuracy per feature set
  against how deep its cut is, one line per backbone (template ``.dvc/plots/by_backbone.json``);
* ``confusion.csv`` — actual and predicted class of each test image of the best model;
* ``hyperparameters.csv`` — for each swept hyperparameter (pooling,
  standardisation, PCA, head kind and each kind's own, e.g. ``logreg.C``) and
  each of its values, the best validation accuracy among the variants with that
  value, per feature set (template ``.dvc/plots/hyperparameters.json``, one panel per
  hyperparameter). Only hyperparameters with two or more values appear.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

# Hyperparameters shared by every kind; a kind's own are named "<kind>.<name>".
_COMMON = ("kind", "pooling", "standardize", "pca", "augment", "tta")


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """Rows of dicts as CSV; the header is every key, in order of first appearance (missing cells empty)."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def hyperparameter_rows(leaderboard: Sequence[dict]) -> list[dict]:
    """Best validation accuracy at each value of each swept hyperparameter, per feature set.

    Parameters
    ----------
    leaderboard : sequence of dict
        Rows with ``feature_set``, ``kind``, ``pooling``, ``standardize``,
        ``pca``, ``params`` (the kind's own values) and ``val_accuracy``.

    Returns
    -------
    list of dict
        ``hyperparameter``, ``value`` (text), ``order`` (rank of the value:
        numeric order for numbers), ``feature_set``, ``val_accuracy``.
    """
    best: dict[tuple[str, str, Any], float] = {}
    for row in leaderboard:
        if row["val_accuracy"] is None:
            continue
        settings = {name: row.get(name) for name in _COMMON}
        settings.update({f"{row['kind']}.{name}": value for name, value in row["params"].items()})
        for name, value in settings.items():
            key = (name, row["feature_set"], _hashable(value))
            best[key] = max(best.get(key, 0.0), row["val_accuracy"])
    values: dict[str, set] = {}
    for name, _, value in best:
        values.setdefault(name, set()).add(value)
    swept = {name: sorted(vals, key=_sort_key) for name, vals in values.items() if len(vals) > 1}
    rows = []
    for (name, feature_set, value), accuracy in sorted(best.items(), key=lambda item: (
            item[0][0], item[0][1], _sort_key(item[0][2]))):
        if name in swept:
            rows.append({"hyperparameter": name, "value": _text(value), "order": swept[name].index(value),
                         "feature_set": feature_set, "val_accuracy": accuracy})
    return rows


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):  # bools too: False before True
        return (1, float(value), "")
    return (2, 0.0, str(value))


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_plots(plots: Path, report: dict, leaderboard: Sequence[dict], best: dict) -> None:
    """CSV data for ``dvc plots``: confusion matrix, accuracy per cut, leaderboard bars, hyperparameters."""
    classes = best["classes"]
    write_csv([{"actual": classes[a], "predicted": classes[p]}
               for a, p in zip(best["y"], best["result"]["predicted"])], plots / "confusion.csv")
    by_cut = [{"feature_set": key, "backbone": f"{s['backbone']} ({s['weights']})", "cut": s["cut"],
               "cut_depth": s["cut_depth"], "val_accuracy": s["val_accuracy"], "test_accuracy": s["test_accuracy"]}
              for key, s in report["feature_sets"].items()]
    write_csv(sorted(by_cut, key=lambda r: (r["backbone"], r["cut_depth"])), plots / "accuracy_by_cut.csv")
    write_csv([{"variant": f"{r['feature_set']}/{r['variant']}", "val_accuracy": r["val_accuracy"]}
               for r in leaderboard], plots / "leaderboard.csv")
    swept = hyperparameter_rows(leaderboard)
    # An empty file would break `dvc plots show`; a grid of one point has nothing to plot against.
    write_csv(swept or [{"hyperparameter": "(nothing swept)", "value": "", "order": 0, "feature_set": "",
                         "val_accuracy": None}], plots / "hyperparameters.csv")


def leaderboard_markdown(rows: Sequence[dict], report: dict) -> str:
    """The leaderboard as a Markdown page for humans: the headline, the cost, then every variant."""
    best = report["best"]
    low, high = best["test_accuracy_ci95"]
    lines = ["# Leaderboard", "",
             f"Best on {report['selected_by']}: **{best['feature_set']} / {best['variant']}** — "
             f"test accuracy **{best['test_accuracy']:.4f}** (95% CI {low:.4f}–{high:.4f}), "
             f"macro-F1 {best['test_macro_f1']:.4f}, on {best['test_images']} test images.", "",
             "Test scores are shown only for the variant chosen on validation in each feature set (✓): "
             "the test split is read once per feature set, for that variant.", ""]
    lines += ["| feature set | chosen variant | val acc | test acc (95% CI) | test macro-F1 | recall per class |",
              "|---|---|---:|---:|---:|---|"]
    for key, s in report["feature_sets"].items():
        lo, hi = s["test_accuracy_ci95"]
        recall = ", ".join(f"{name} {value:.2f}" for name, value in s["test_recall"].items())
        lines.append(f"| {key} | {s['variant']} | {_num(s['val_accuracy'])} | {s['test_accuracy']:.4f} "
                     f"({lo:.4f}–{hi:.4f}) | {s['test_macro_f1']:.4f} | {recall} |")
    if report.get("cost"):
        lines += ["", cost_markdown(report["cost"])]
    lines += ["", "## Every variant", "",
              "| # | feature set | cut | variant | val acc | val macro-F1 | test acc | fit s | peak MiB |",
              "|---:|---|---|---|---:|---:|---:|---:|---:|"]
    for rank, row in enumerate(rows, 1):
        test = f"{row['test_accuracy']:.4f} ✓" if row["selected"] else ""
        lines.append(f"| {rank} | {row['feature_set']} | {row['cut']} | {row['variant']} | "
                     f"{_num(row['val_accuracy'])} | {_num(row['val_macro_f1'])} | {test} | "
                     f"{row['fit_seconds']:.2f} | {_num(row.get('peak_rss_mib'), 1)} |")
    return "\n".join(lines) + "\n"


def cost_markdown(cost: dict) -> str:
    """One paragraph: what the sweep took against running the backbone end to end per variant."""
    text = (f"**Cost.** {cost['variants']} variants: the heads stages took {cost['heads_stage_seconds']:.1f} s "
            f"of wall time ({cost['fitted']} fitted, {cost['reused']} reused from earlier runs; "
            f"{cost['fit_seconds']:.1f} s of fitting in all).")
    if cost.get("end_to_end_seconds") is not None:
        text += (f" Run end to end through the frozen backbone instead — every variant reading every image "
                 f"through it each epoch, at the measured {cost['seconds_per_image_mean'] * 1000:.1f} ms per "
                 f"image — the same variants would take ≈ {cost['end_to_end_seconds']:,.0f} s "
                 f"({cost['end_to_end_seconds'] / max(cost['fit_seconds'], 1e-9):,.0f}× the fitting time), "
                 f"against ≈ {cost['extraction_seconds']:,.0f} s to extract the features once.")
    return text


def _num(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"
