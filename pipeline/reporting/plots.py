"""The data of every ``dvc plots`` plot (CSV, one file per plot declared at the top of ``dvc.yaml``).

* ``leaderboard.csv`` — validation accuracy of the top :data:`LEADERBOARD_BARS` variants and of each
  feature set's choice (bar chart, template ``.dvc/plots/leaderboard.json``; the whole grid is
  ``reports/leaderboard.csv``);
* ``accuracy_by_cut.csv`` — each feature set's selection score (validation accuracy, or the k-fold CV
  mean) against how deep its cut is, one line per backbone (template ``.dvc/plots/by_backbone.json``);
  the test accuracy and its bootstrap 95% interval only on the overall choice's row: a test score
  drawn for every cut would invite choosing the cut on test;
* ``confusion.csv`` — actual and predicted class of each test image of the best model;
* ``hyperparameters.csv`` — for each swept hyperparameter (pooling,
  standardisation, PCA, head kind and each kind's own, e.g. ``dense.dropout``;
  not a searched ``C``, which ``search.csv`` plots on a log axis) and
  each of its values, the best validation accuracy among the variants with that
  value, per feature set (template ``.dvc/plots/hyperparameters.json``, one panel per
  hyperparameter). Only hyperparameters with two or more values appear;
* ``search.csv`` — the coarse-to-fine search of each searched setting (``C`` of
  logistic regression and the linear SVM): every value tried, listed and
  bisected, with its selection score and fit time, one line per feature set ×
  kind × preprocessing (template ``.dvc/plots/search.json``, one panel per
  feature set).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.reporting.tables import write_csv

# Bars in the leaderboard chart (each feature set's choice is added when it ranks lower): the whole grid is in
# reports/leaderboard.csv; 44 bars of long names on one chart are unreadable.
LEADERBOARD_BARS = 20
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
        # A searched setting (a C bisected coarse to fine: ~20 values) has its own plot on a log axis (search.csv).
        settings.update(
            {f"{row['kind']}.{name}": value for name, value in row["params"].items() if name != row.get("searched")}
        )
        for name, value in settings.items():
            key = (name, row["feature_set"], _hashable(value))
            best[key] = max(best.get(key, 0.0), row["val_accuracy"])
    values: dict[str, set] = {}
    for name, _, value in best:
        values.setdefault(name, set()).add(value)
    swept = {name: sorted(vals, key=_sort_key) for name, vals in values.items() if len(vals) > 1}
    rows = []
    for (name, feature_set, value), accuracy in sorted(
        best.items(), key=lambda item: (item[0][0], item[0][1], _sort_key(item[0][2]))
    ):
        if name in swept:
            rows.append(
                {
                    "hyperparameter": name,
                    "value": _text(value),
                    "order": swept[name].index(value),
                    "feature_set": feature_set,
                    "val_accuracy": accuracy,
                }
            )
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


def leaderboard_bars(leaderboard: Sequence[dict], top: int = LEADERBOARD_BARS) -> list[dict]:
    """The bars of the leaderboard chart: the ``top`` variants by rank, and each feature set's choice.

    Parameters
    ----------
    leaderboard : sequence of dict
        Ranked rows (best first) with ``feature_set``, ``variant``, ``val_accuracy``, ``selected``.
    top : int

    Returns
    -------
    list of dict
        ``variant`` (``<feature set>/<variant>``), ``feature_set``, ``rank`` (1 = best), ``val_accuracy``;
        at most ``top`` plus one per feature set, so that the labels of a long grid stay legible.
    """
    return [
        {
            "variant": f"{r['feature_set']}/{r['variant']}",
            "feature_set": r["feature_set"],
            "rank": rank,
            "val_accuracy": r["val_accuracy"],
        }
        for rank, r in enumerate(leaderboard, start=1)
        if rank <= top or r.get("selected")
    ]


def search_rows(leaderboard: Sequence[dict]) -> list[dict]:
    """Every value a coarse-to-fine search tried (rows marked ``searched``), ascending per line."""
    rows = []
    for row in leaderboard:
        setting = row.get("searched")
        if not setting or setting not in (row.get("params") or {}):
            continue
        preprocessing = (
            f"{row['pooling']}"
            + ("" if row.get("standardize") else ", raw")
            + (f", pca {row['pca']}" if row.get("pca") is not None else "")
        )
        rows.append(
            {
                "feature_set": row["feature_set"],
                "line": f"{row['kind']} ({preprocessing})",
                "setting": setting,
                "value": row["params"][setting],
                "val_accuracy": row["val_accuracy"],
                "fit_seconds": row.get("fit_seconds"),
                "selected": bool(row.get("selected")),
            }
        )
    return sorted(rows, key=lambda r: (r["feature_set"], r["line"], r["value"]))


def write_plots(plots: Path, report: dict, leaderboard: Sequence[dict], best: dict) -> None:
    """CSV data for ``dvc plots``: confusion matrix, accuracy per cut, leaderboard bars, hyperparameters."""
    classes = best["classes"]
    write_csv(
        [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(best["y"], best["result"]["predicted"])],
        plots / "confusion.csv",
    )
    chosen = (report.get("best") or {}).get("feature_set")
    by_cut = [
        {
            "feature_set": key,
            "backbone": f"{s['backbone']} ({s['weights']})",
            "cut": s["cut"],
            "cut_depth": s["cut_depth"],
            "val_accuracy": s["val_accuracy"],
            **(
                {
                    "chosen_test_accuracy": s["test_accuracy"],
                    "test_ci95_low": s["test_accuracy_ci95"][0],
                    "test_ci95_high": s["test_accuracy_ci95"][1],
                }
                if key == chosen
                else {"chosen_test_accuracy": None, "test_ci95_low": None, "test_ci95_high": None}
            ),
        }
        for key, s in report["feature_sets"].items()
    ]
    write_csv(sorted(by_cut, key=lambda r: (r["backbone"], r["cut_depth"])), plots / "accuracy_by_cut.csv")
    write_csv(leaderboard_bars(leaderboard), plots / "leaderboard.csv")
    swept = hyperparameter_rows(leaderboard)
    # An empty file would break `dvc plots show`; a grid of one point has nothing to plot against.
    write_csv(
        swept
        or [{"hyperparameter": "(nothing swept)", "value": "", "order": 0, "feature_set": "", "val_accuracy": None}],
        plots / "hyperparameters.csv",
    )
    write_csv(
        search_rows(leaderboard)
        or [
            {
                "feature_set": "(nothing searched)",
                "line": "",
                "setting": "",
                "value": None,
                "val_accuracy": None,
                "fit_seconds": None,
                "selected": False,
            }
        ],
        plots / "search.csv",
    )
