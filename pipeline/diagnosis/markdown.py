"""The Markdown pages of the diagnose stage: errors, likely label mistakes, the learning curve sentence.

Thumbnails are linked relative to the page, so the pages read the same in a
checkout, on a Git forge and in an editor's preview.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def _link(page: Path, image: Path) -> str:
    return Path(os.path.relpath(image, page.parent)).as_posix()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _table(page: Path, rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> list[str]:
    """A Markdown table whose first column is each row's thumbnail (``row["thumb"]``)."""
    lines = ["| image | " + " | ".join(title for title, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        picture = f"![{_cell(row['id'])}]({_link(page, row['thumb'])})"
        lines.append(f"| {picture} | " + " | ".join(_cell(row[key]) for _, key in columns) + " |")
    return lines


def errors_page(
    page: Path,
    model: str,
    errors: Sequence[dict],
    total_errors: int,
    pairs: Sequence[dict],
    unsure: Sequence[dict],
    predictions_csv: Path,
    images: dict,
    note: str = "",
) -> str:
    """``reports/errors.md``: the misclassified val and test images, the confused pairs, the least confident.

    ``note`` says whose predictions val's are (out of fold under CV).
    """
    shown = f"the {len(errors)} most confident of {total_errors}" if len(errors) < total_errors else "all"
    lines = [
        "# What the chosen model gets wrong",
        "",
        f"Model: **{model}**. {note} Every val and test image with its "
        f"probabilities: [{predictions_csv.name}]({_link(page, predictions_csv)}).",
        "",
        "## Most confused class pairs (val + test)",
        "",
    ]
    if pairs:
        lines += ["| true | predicted | images |", "|---|---|---|"]
        lines += [f"| {_cell(p['true'])} | {_cell(p['predicted'])} | {p['images']} |" for p in pairs]
    else:
        lines.append("No image of val or test is misclassified.")
    lines += [
        "",
        f"## Misclassified images ({total_errors}; {shown} shown, most confident first)",
        "",
        f"![misclassified]({_link(page, images['errors'])})",
        "",
    ]
    columns = [
        ("split", "split"),
        ("true", "true"),
        ("predicted", "predicted"),
        ("confidence", "confidence"),
        ("id", "id"),
    ]
    lines += _table(page, errors, columns) if errors else ["None."]
    lines += [
        "",
        f"## Least confident correct images ({len(unsure)})",
        "",
        f"![least confident]({_link(page, images['least_confident'])})",
        "",
    ]
    lines += _table(page, unsure, columns) if unsure else ["None."]
    return "\n".join(lines) + "\n"


def label_issues_page(
    page: Path,
    model: str,
    flagged: Sequence[dict],
    total_flagged: int,
    ranked: int,
    folds: int,
    issues_csv: Path,
    image: Path,
) -> str:
    """``reports/label_issues.md``: images whose given label looks wrong, worst first; labels are not changed."""
    lines = [
        "# Likely label mistakes",
        "",
        f"Confident learning ([cleanlab](https://github.com/cleanlab/cleanlab)) on {folds}-fold "
        f"cross-validated probabilities of **{model}** over the {ranked} train and val images. "
        f"{total_flagged} image(s) flagged; the {len(flagged)} with the lowest label quality "
        "(the held-out probability of the given label) are shown. Labels are never changed "
        "automatically: look at each, fix the source folder if it is wrong, and rerun `dvc repro`. "
        f"Every image's score: [{issues_csv.name}]({_link(page, issues_csv)}).",
        "",
        f"![likely label mistakes]({_link(page, image)})",
        "",
    ]
    columns = [
        ("split", "split"),
        ("given label", "given"),
        ("suggested", "suggested"),
        ("label quality", "quality"),
        ("id", "id"),
    ]
    lines += _table(page, flagged, columns) if flagged else ["No image is flagged."]
    return "\n".join(lines) + "\n"


def learning_curve_page(curves: dict, evaluated_on: str) -> str:
    """``reports/learning_curve.md``: each feature set's curve in a table and its one sentence."""
    lines = [
        "# Would more labelled images help?",
        "",
        f"Accuracy of each feature set's chosen head, refitted on random draws of n training images per "
        f"class and scored on {evaluated_on} (test is not read). low–high: the range over the fits. "
        "fits: the fits averaged at that point, `diagnose.curve_draws` random draws in each fold (the last "
        "point, every image, has nothing to draw: one fit per fold).",
        "",
    ]
    for key, curve in curves.items():
        lines += [
            f"## {key} ({curve['variant']})",
            "",
            f"**{curve['extrapolation']['sentence']}.**",
            "",
            "| per class | accuracy | low | high | fits |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['per_class']} | {r['accuracy']:.4f} | {r['low']:.4f} | {r['high']:.4f} | {r['draws']} |"
            for r in curve["rows"]
        ]
        lines.append("")
    return "\n".join(lines)
