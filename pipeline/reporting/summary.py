"""The run at a glance, for a terminal: the chosen model and the top of the leaderboard in 100 columns.

``shoulders summary`` prints :func:`summary_lines` of ``reports/evaluation.json`` and
``reports/leaderboard.csv`` (the evaluate stage's outputs); the full tables stay in
``reports/leaderboard.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

WIDTH = 100
# Column widths: rank, feature set, variant, then the numbers (8 characters each, with their spaces).
_RANK, _FEATURES, _VARIANT = 3, 18, 37


def summary_lines(report: dict, leaderboard: Sequence[dict], *, top: int = 10) -> list[str]:
    """The chosen model, each feature set's best, and the ``top`` rows of the leaderboard, each line <= 100 wide.

    Parameters
    ----------
    report : dict
        ``reports/evaluation.json``.
    leaderboard : sequence of dict
        The rows of ``reports/leaderboard.csv`` as read (strings; ranked best first).
    top : int
        Leaderboard rows shown.

    Returns
    -------
    list of str
    """
    best = report["best"]
    low, high = best["test_accuracy_ci95"]
    # The first line is the answer: the model and its numbers; a long name is cut, never the numbers.
    numbers = f"  val {best['val_accuracy']:.3f}, test {best['test_accuracy']:.3f} (95% CI {low:.3f}-{high:.3f})"
    lines = [
        f"Chosen: {_cut(best['feature_set'] + ' / ' + best['variant'], WIDTH - len('Chosen: ') - len(numbers))}"
        f"{numbers}",
        _fit(
            f"  on {report.get('selected_by', 'validation accuracy')}; test scored once, "
            f"{best.get('test_images', '?')} images"
        ),
        "",
        f"Top {min(top, len(leaderboard))} of {len(leaderboard)} variants "
        "(test accuracy only for each feature set's choice, read once):",
        f"{'#':>{_RANK}}  {'feature set':<{_FEATURES}} {'variant':<{_VARIANT}} {'val acc':>8} {'val f1':>8} "
        f"{'test acc':>9}  chosen",
    ]
    for rank, row in enumerate(leaderboard[:top], start=1):
        chosen = row["feature_set"] == best["feature_set"] and row["variant"] == best["variant"]
        lines.append(
            f"{rank:>{_RANK}}  {_cut(row['feature_set'], _FEATURES):<{_FEATURES}} "
            f"{_cut(row['variant'], _VARIANT):<{_VARIANT}} {_number(row.get('val_accuracy')):>8} "
            f"{_number(row.get('val_macro_f1')):>8} {_number(row.get('test_accuracy')):>9}  "
            f"{'*' if chosen else ''}".rstrip()
        )
    lines += ["", "Best of each feature set: test accuracy [95% CI]"]
    for key, summary in report["feature_sets"].items():
        a, b = summary["test_accuracy_ci95"]
        lines.append(
            _fit(
                f"  {_cut(key, _FEATURES):<{_FEATURES}} {summary['test_accuracy']:.3f} [{a:.3f}, {b:.3f}]"
                f"  {summary['variant']}"
            )
        )
    lines += ["", "More: reports/leaderboard.md, reports/evaluation.json, dvc plots show"]
    return lines


def _number(value: str | None) -> str:
    return f"{float(value):.3f}" if value not in (None, "") else ""


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fit(line: str) -> str:
    return _cut(line, WIDTH)
