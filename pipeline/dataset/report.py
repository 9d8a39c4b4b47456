"""The dataset sanity report prepare writes: counts, sizes, duplicates, warnings.

:func:`pipeline.dataset.curation.build_manifest` fills a :class:`PrepareReport` while it
builds the manifest; this module turns the final manifest rows into the
statistics people check before trusting a number computed on them (images per
class and split, class imbalance, the distribution of image sizes, images too
small for a backbone), and renders the report as Markdown
(:func:`summary_markdown`) and as the headline counts for ``dvc metrics``
(:func:`dataset_metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.config import SPLITS

log = logging.getLogger(__name__)

# The default backbones' input side (EfficientNet-Lite0): images with a median shorter side below
# UPSCALE_NOTE_BELOW get a note on how much they are enlarged and what to try.
TYPICAL_INPUT = 224
UPSCALE_NOTE_BELOW = 160
# Lower edges of the shorter-side histogram, in pixels: powers of two, the
# scale at which backbones (32 to 600 px inputs) see a difference.
SIDE_BINS = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# How many ids a list in the report shows; the counts are always complete.
_LISTED = 50


@dataclass
class PrepareReport:
    """What prepare found in the dataset; written to its JSON report and to DVC metrics."""

    source: str
    layout: str
    classes: list[str]
    split_policy: str = ""  # how the split was made, in words
    images: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    per_class_split: dict[str, dict[str, int]] = field(default_factory=dict)
    class_imbalance: float = 1.0  # largest / smallest train class
    empty_classes: dict[str, str] = field(default_factory=dict)  # folder name → why it holds no image
    bad_images_skipped: list[str] = field(default_factory=list)
    other_files_ignored: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    near_duplicates: dict | None = None  # None: not searched
    image_size: dict[str, dict[str, float]] = field(default_factory=dict)
    short_side_histogram: dict[str, int] = field(default_factory=dict)
    small_images: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def warn(self, message: str) -> None:
        """Record a warning in the report and log it."""
        self.warnings.append(message)
        log.warning("%s", message)


def fill_statistics(report: PrepareReport, records: Sequence, *, small_side: int) -> None:
    """Count the final manifest rows into ``report`` and warn about what deserves a look.

    Parameters
    ----------
    report : PrepareReport
        ``classes`` must already be set; every other statistic is overwritten.
    records : sequence of Record
        The manifest rows (need ``class_name``, ``split``, ``width``, ``height``, ``id``).
    small_side : int
        Images whose shorter side is below this many pixels are listed as small.
    """
    report.images = len(records)
    report.per_split = {s: sum(r.split == s for r in records) for s in SPLITS}
    report.per_class_split = {
        c: {s: sum(r.class_name == c and r.split == s for r in records) for s in SPLITS} for c in report.classes
    }
    train = [counts["train"] for counts in report.per_class_split.values()]
    report.class_imbalance = round(max(train) / max(1, min(train)), 3) if train else 1.0
    for split in SPLITS:
        if report.per_split[split] == 0:
            continue
        absent = [c for c, counts in report.per_class_split.items() if counts[split] == 0]
        if absent:
            report.warn(f"class(es) {absent} have no {split} images: their {split} accuracy is not measured")
    widths = np.array([r.width for r in records], dtype=np.int64)
    heights = np.array([r.height for r in records], dtype=np.int64)
    short = np.minimum(widths, heights)
    report.image_size = {
        "width": _percentiles(widths),
        "height": _percentiles(heights),
        "shorter side": _percentiles(short),
    }
    report.short_side_histogram = _histogram(short)
    small = [r.id for r, side in zip(records, short) if side < small_side]
    report.small_images = {"below": small_side, "count": len(small), "ids": small[:_LISTED]}
    if small:
        report.warn(
            f"{len(small)} image(s) have a side shorter than {small_side} px "
            f"(data.small_image_side); they are upscaled to the backbone's input, e.g. {small[:3]}"
        )


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    points = {"min": 0, "p5": 5, "median": 50, "p95": 95, "max": 100}
    return {name: float(np.percentile(values, q)) for name, q in points.items()}


def _histogram(short: np.ndarray) -> dict[str, int]:
    edges = list(SIDE_BINS) + [None]
    out = {}
    for low, high in zip(edges[:-1], edges[1:]):
        inside = short >= low if high is None else (short >= low) & (short < high)
        out[f"{low}+" if high is None else f"{low}-{high - 1}"] = int(inside.sum())
    return out


# --------------------------------------------------------------------------- rendering


def summary_markdown(report: PrepareReport) -> str:
    """The prepare report as a short Markdown page."""
    lines = [
        f"# Dataset: {report.source}",
        "",
        f"{report.images} images, {len(report.classes)} classes, layout `{report.layout}`; "
        f"class imbalance (largest / smallest train class): {report.class_imbalance}",
        "",
        f"Split: {report.split_policy}.",
        "",
        "| class | " + " | ".join(SPLITS) + " |",
        "|---|" + "---:|" * len(SPLITS),
    ]
    for name, counts in report.per_class_split.items():
        lines.append(f"| {name} | " + " | ".join(str(counts[s]) for s in SPLITS) + " |")
    lines.append("| **all** | " + " | ".join(str(report.per_split[s]) for s in SPLITS) + " |")
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    lines += _duplicates_section(report)
    lines += _near_duplicates_section(report.near_duplicates)
    lines += _sizes_section(report)
    if report.empty_classes:
        lines += ["", f"## Empty class folders: {len(report.empty_classes)} (not classes)", ""]
        lines += [f"- `{name}`: {why}" for name, why in report.empty_classes.items()]
    if report.bad_images_skipped:
        lines += ["", f"## Skipped: {len(report.bad_images_skipped)} undecodable", ""]
        lines += [f"- {m}" for m in report.bad_images_skipped]
    if report.other_files_ignored:
        lines += ["", f"## Ignored: {len(report.other_files_ignored)} files that are not images", ""]
        lines += [f"- {m}" for m in report.other_files_ignored[:_LISTED]]
    return "\n".join(lines) + "\n"


def _duplicates_section(report: PrepareReport) -> list[str]:
    dup = report.duplicates
    lines = ["", "## Duplicates (byte-identical files)", ""]
    if not dup:
        return lines + ["Not checked (data.duplicates: keep)."]
    lines.append(
        f"{dup.get('groups', 0)} groups; removed {dup.get('removed_cross_split', 0)} that "
        f"leaked across splits and {dup.get('removed_within_split', 0)} repeats within a split."
    )
    straddling = {k: v for k, v in dup.items() if k.count("_") == 1 and k.split("_")[0] in SPLITS}
    if straddling:
        lines.append(
            "Groups straddling splits: " + ", ".join(f"{k.replace('_', '/')}: {v}" for k, v in straddling.items()) + "."
        )
    return lines


def _near_duplicates_section(near: dict | None) -> list[str]:
    lines = ["", "## Near duplicates across splits", ""]
    if near is None:
        return lines + ["Not checked (data.near_duplicates: null)."]
    lines.append(
        f"{near['pairs']} suspected pair(s) within {near['max_distance']} bits ({near['method']}); "
        "reported, not removed."
    )
    if near["listed"]:
        lines += ["", "| distance | image | image |", "|---:|---|---|"]
        lines += [f"| {p['distance']} | {p['id_a']} | {p['id_b']} |" for p in near["listed"][:_LISTED]]
    return lines


def _sizes_section(report: PrepareReport) -> list[str]:
    sizes = report.image_size
    lines = [
        "",
        "## Image sizes (as displayed, pixels)",
        "",
        "| | min | p5 | median | p95 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {k} | " + " | ".join(f"{v[q]:g}" for q in ("min", "p5", "median", "p95", "max")) + " |"
        for k, v in sizes.items()
        if v
    ]
    lines += [
        "",
        "Shorter side: "
        + ", ".join(f"{k} px: {v}" for k, v in report.short_side_histogram.items() if v)
        + f". Smaller than {report.small_images.get('below')} px: {report.small_images.get('count', 0)}.",
    ]
    short = (sizes.get("shorter side") or {}).get("median")
    if short and short < UPSCALE_NOTE_BELOW:
        lines += [
            "",
            f"**Small images.** The median shorter side is {short:g} px: each image is enlarged to its "
            f"backbone's input ({TYPICAL_INPUT} px for EfficientNet-Lite0, 240 and 260 for Lite1 and Lite2), "
            f"about {TYPICAL_INPUT / short:.1f}× here, so the backbone sees soft, blown-up pixels. "
            "Worth trying: an earlier cut (a block's features keep finer detail than the last layer's), a "
            "backbone with a smaller input (MobileNet at 128 or 160 px), and comparing both by the "
            "leaderboard's validation accuracy.",
        ]
    return lines


def dataset_metrics(report: PrepareReport) -> dict:
    """The dataset counts worth seeing next to accuracy in ``dvc metrics show``."""
    duplicates = report.duplicates
    out = {
        "images": report.images,
        **report.per_split,
        "classes": len(report.classes),
        "class_imbalance": report.class_imbalance,
        "duplicates_removed_cross_split": duplicates.get("removed_cross_split", 0),
        "duplicates_removed_within_split": duplicates.get("removed_within_split", 0),
        "bad_images_skipped": len(report.bad_images_skipped),
        "empty_classes": len(report.empty_classes),
        "small_images": report.small_images.get("count", 0),
    }
    if report.near_duplicates is not None:
        out["near_duplicate_pairs_cross_split"] = report.near_duplicates["pairs"]
    return out
