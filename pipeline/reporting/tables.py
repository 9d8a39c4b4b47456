"""What the evaluate stage writes for people: CSV tables, the Markdown leaderboard, the cost paragraph."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


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


def leaderboard_markdown(rows: Sequence[dict], report: dict, curve: dict | None = None) -> str:
    """The leaderboard as a Markdown page for humans: the headline, the cost, then every variant.

    ``curve``: the learning curve's sentence for the chosen model
    (:func:`pipeline.diagnosis.diagnose.headline_curve`), said under the headline.
    """
    best = report["best"]
    low, high = best["test_accuracy_ci95"]
    lines = [
        "# Leaderboard",
        "",
        f"Best on {report['selected_by']}: **{best['feature_set']} / {best['variant']}** — "
        f"test accuracy **{best['test_accuracy']:.4f}** (95% CI {low:.4f}–{high:.4f}), "
        f"macro-F1 {best['test_macro_f1']:.4f}, on {best['test_images']} test images.",
        "",
        *(
            [
                f"**Would more labelled images help?** For {curve['feature_set']} / {curve['variant']}, "
                f"{curve['sentence']} (scored on {curve['evaluated_on']}; the curves of every feature set: "
                "learning_curve.md).",
                "",
            ]
            if curve
            else []
        ),
        "Test scores are shown only for the variant chosen on validation in each feature set (✓): "
        "the test split is read once per feature set, for that variant.",
        "",
    ]
    lines += [
        "| feature set | chosen variant | selected by | val acc | indistinguishable | test acc (95% CI) "
        "| test macro-F1 | recall per class |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for key, s in report["feature_sets"].items():
        lo, hi = s["test_accuracy_ci95"]
        recall = ", ".join(f"{name} {value:.2f}" for name, value in s["test_recall"].items())
        tied = "" if s.get("indistinguishable") is None else str(s["indistinguishable"])
        lines.append(
            f"| {key} | {s['variant']} | {s.get('selection', '')} | {_num(s['val_accuracy'])} | {tied} | "
            f"{s['test_accuracy']:.4f} ({lo:.4f}–{hi:.4f}) | {s['test_macro_f1']:.4f} | {recall} |"
        )
    lines += [
        "",
        "*Indistinguishable*: how many other variants of the feature set a paired McNemar test "
        "(p ≥ 0.05) on the validation images cannot tell from the chosen one; ties of the validation "
        "score go to the simpler, more regularised variant.",
    ]
    if report.get("cost"):
        lines += ["", cost_markdown(report["cost"])]
    lines += [
        "",
        "## Every variant",
        "",
        "| # | feature set | cut | variant | val acc | val macro-F1 | test acc | fit s | peak MiB |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for rank, row in enumerate(rows, 1):
        test = f"{row['test_accuracy']:.4f} ✓" if row["selected"] else ""
        stopped = f" (not converged in {row['not_converged']} fits)" if row.get("not_converged") else ""
        raced = row.get("raced_out")
        if raced:
            stopped += f" (stopped by racing after {raced['after_folds']} of {raced['folds']} folds)"
        lines.append(
            f"| {rank} | {row['feature_set']} | {row['cut']} | {row['variant']}{stopped} | "
            f"{_num(row['val_accuracy'])} | {_num(row['val_macro_f1'])} | {test} | "
            f"{row['fit_seconds']:.2f} | {_num(row.get('peak_rss_mib'), 1)} |"
        )
    if any(row.get("not_converged") for row in rows):
        lines += [
            "",
            "*Not converged*: the solver stopped at its iteration limit in that many of the variant's fits "
            "(scikit-learn's ConvergenceWarning); the variant is scored as it stopped.",
        ]
    if any(row.get("raced_out") for row in rows):
        lines += [
            "",
            "*Stopped by racing*: after that many folds of the cross-validation a one-sided exact McNemar "
            "test on the images scored so far found the variant less accurate than the best complete variant "
            "of its feature set (`heads.race`); its val scores are over those folds only, it is never chosen "
            "and has no fitted head.",
        ]
    return "\n".join(lines) + "\n"


def cost_markdown(cost: dict) -> str:
    """One paragraph: what the sweep took against running the backbone end to end per variant."""
    text = (
        f"**Cost.** {cost['variants']} variants: the heads stages took {cost['heads_stage_seconds']:.1f} s "
        f"of wall time ({cost['fitted']} fitted, {cost['reused']} reused from earlier runs; "
        f"{cost['fit_seconds']:.1f} s of fitting in all)."
    )
    if cost.get("end_to_end_seconds") is not None:
        text += (
            f" Run end to end through the frozen backbone instead — every variant reading every image "
            f"through it each epoch, at the measured {cost['seconds_per_image_mean'] * 1000:.1f} ms per "
            f"image{_measured_when(cost)} — the same variants would take ≈ {cost['end_to_end_seconds']:,.0f} s "
            f"({cost['end_to_end_seconds'] / max(cost['fit_seconds'], 1e-9):,.0f}× the fitting time), "
            f"against ≈ {cost['extraction_seconds']:,.0f} s to extract the features once."
        )
    return text


def _measured_when(cost: dict) -> str:
    """`` (measured on this machine on <date>)`` from the earliest backbone timing, or nothing if unrecorded."""
    dates = sorted(d for d in cost.get("measured_at", []) if d)
    return f" (measured on this machine on {dates[0][:10]})" if dates else ""


def _num(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"
