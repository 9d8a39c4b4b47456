"""What people read of a run: the leaderboard chart's bars and the summary, legible however long the grid."""

from __future__ import annotations

from pipeline.reporting.plots import leaderboard_bars, search_rows
from pipeline.reporting.summary import summary_lines


def _board(n_per_set: int = 22) -> list[dict]:
    # Two feature sets with long names, ranked best first; the weaker set's choice ranks last of all.
    rows = []
    for i in range(n_per_set):
        rows.append(
            {
                "feature_set": "a_rather_long_feature_set_name",
                "variant": f"avg-dense-h256-d0.2-lr0.001-e{i}",
                "val_accuracy": 0.9 - i / 1000,
                "val_macro_f1": 0.9,
                "test_accuracy": 0.93 if i == 0 else None,
                "selected": i == 0,
            }
        )
    for i in range(n_per_set):
        rows.append(
            {
                "feature_set": "b",
                "variant": f"avg-logreg-C{i}",
                "val_accuracy": 0.5 - i / 1000,
                "val_macro_f1": 0.5,
                "test_accuracy": 0.48 if i == n_per_set - 1 else None,
                "selected": i == n_per_set - 1,
            }
        )
    return rows


def test_the_leaderboard_chart_shows_the_top_twenty_and_every_feature_sets_choice():
    board = _board()
    bars = leaderboard_bars(board)
    assert [b["rank"] for b in bars] == [*range(1, 21), 44]
    assert bars[-1] == {"variant": "b/avg-logreg-C21", "feature_set": "b", "rank": 44, "val_accuracy": 0.479}


def test_the_summary_fits_100_columns_whatever_the_names():
    board = [{k: "" if v is None else str(v) for k, v in row.items()} for row in _board()]
    report = {
        "selected_by": "validation (val split) accuracy",
        "best": {
            "feature_set": "a_rather_long_feature_set_name",
            "variant": board[0]["variant"],
            "val_accuracy": 0.9,
            "test_accuracy": 0.93,
            "test_accuracy_ci95": [0.9, 0.96],
            "test_images": 200,
        },
        "feature_sets": {
            "a_rather_long_feature_set_name": {
                "variant": board[0]["variant"],
                "test_accuracy": 0.93,
                "test_accuracy_ci95": [0.9, 0.96],
            },
            "b": {"variant": "avg-logreg-C21", "test_accuracy": 0.48, "test_accuracy_ci95": [0.4, 0.55]},
        },
    }
    lines = summary_lines(report, board, top=5)
    assert max(map(len, lines)) <= 100
    assert lines[0].startswith("Chosen: a_rather_long_feature_set_name / avg-dense-h256")
    assert lines[0].endswith("…  val 0.900, test 0.930 (95% CI 0.900-0.960)")  # the name cut, not the numbers
    # However long the selection's words and the names, the first line keeps the model's numbers.
    long = {
        **report,
        "selected_by": "validation (5-fold CV on train+val (auto: val has 23 images of its smallest "
        "class, < 70)) accuracy",
        "best": {**report["best"], "feature_set": "x" * 60},
    }
    first = summary_lines(long, board, top=5)[0]
    assert first.startswith("Chosen: xxx") and first.endswith("val 0.900, test 0.930 (95% CI 0.900-0.960)")
    assert len(first) <= 100
    assert lines[5].split() == [
        "1",
        "a_rather_long_fea…",
        "avg-dense-h256-d0.2-lr0.001-e0",
        "0.900",
        "0.900",
        "0.930",
        "*",
    ]
    assert len([line for line in lines if line[:3].strip().isdigit()]) == 5
    assert "  b                  0.480 [0.400, 0.550]  avg-logreg-C21" in lines


def test_the_search_plot_has_every_value_tried_of_each_searched_line_ascending():
    def row(fs, kind, c, acc, searched="C", pooling="avg", selected=False):
        return {
            "feature_set": fs,
            "kind": kind,
            "pooling": pooling,
            "standardize": True,
            "pca": None,
            "params": {"C": c},
            "searched": searched,
            "val_accuracy": acc,
            "fit_seconds": 0.1,
            "selected": selected,
        }

    leaderboard = [
        row("a", "logreg", 10.0, 0.9, selected=True),
        row("a", "logreg", 0.1, 0.8),
        row("a", "logreg", 1.0, 0.85, pooling="max"),
        row("b", "svm_linear", 1e-3, 0.7),
        row("a", "svm_rbf", 1.0, 0.95, searched=None),
    ]  # a grid, not a search
    rows = search_rows(leaderboard)
    assert [(r["feature_set"], r["line"], r["value"]) for r in rows] == [
        ("a", "logreg (avg)", 0.1),
        ("a", "logreg (avg)", 10.0),
        ("a", "logreg (max)", 1.0),
        ("b", "svm_linear (avg)", 1e-3),
    ]
    assert [r["selected"] for r in rows] == [False, True, False, False]


def test_the_leaderboard_marks_a_variant_whose_solver_did_not_converge():
    from pipeline.reporting.tables import leaderboard_markdown

    rows = [
        {**row, "cut": "top", "fit_seconds": 0.5, "not_converged": 4 if i == 1 else 0}
        for i, row in enumerate(_board(3))
    ]
    summary = {
        "variant": rows[0]["variant"],
        "selection": "val split",
        "val_accuracy": 0.9,
        "test_accuracy": 0.93,
        "test_accuracy_ci95": [0.9, 0.96],
        "test_macro_f1": 0.92,
        "test_recall": {"x": 1.0},
    }
    report = {
        "selected_by": "val split accuracy",
        "best": {**summary, "feature_set": "b", "test_images": 100},
        "feature_sets": {"b": summary},
    }
    text = leaderboard_markdown(rows, report)
    assert "| avg-dense-h256-d0.2-lr0.001-e1 (not converged in 4 fits) |" in text
    assert text.count("not converged in") == 1 and "*Not converged*" in text
    clean = leaderboard_markdown([{**row, "not_converged": 0} for row in rows], report)
    assert "onverged" not in clean
