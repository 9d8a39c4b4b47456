"""The data of every ``dvc plots`` plot (CSV, one file per plot declared at the top of ``dvc.yaml``).

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

from pathlib import Path
from typing import Any, Sequence

from pipeline.reporting.tables import write_csv

# Hyperparameters shared by every kind; a kind's own are named "<kind>.<name>".
_COMMON = ("kind", "pooling", "standardize", "pca", "augment", "tta")


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
