"""Building the manifest from a source: scan, inspect, de-duplicate, split (the prepare stage's core).

Every image is decoded once (:func:`pipeline.dataset.sources.inspect_all`; once
per change of its bytes, with the stage's record of file stats,
:mod:`pipeline.dataset.stat_cache`) so that a broken file stops the pipeline
here, before any backbone runs, and its content hash finds exact duplicates
(:mod:`pipeline.dataset.duplicates`). The result is the manifest (:mod:`pipeline.manifest`): one row per image with its
path, label, class name, split, sha256, width and height.

A class folder that ends up with no usable image (empty, only non-image files,
or every image undecodable and skipped) is not a class: it gets no label and is
listed under ``empty_classes`` in the report with a warning. A class with
images in val or test but none in train is an error, since no head could ever
predict it. A pre-split source that lacks val or test gets it drawn from its
training images (the policy: :mod:`pipeline.dataset.layouts`); the report says
how the split was made (``split_policy``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from pipeline.config import SPLITS, DataParams, NearDuplicateParams
from pipeline.dataset.duplicates import cross_split_pairs, remove_duplicates
from pipeline.dataset.label_table import scan_table
from pipeline.dataset.layouts import missing_splits
from pipeline.dataset.report import PrepareReport, fill_statistics
from pipeline.dataset.sources import SourceScan, inspect_all, scan_source
from pipeline.dataset.splits import draw_from_train, stratified_split
from pipeline.dataset.stat_cache import StatCache
from pipeline.images import BadImageError
from pipeline.manifest import Record

log = logging.getLogger(__name__)

# Near-duplicate pairs listed in the report (all are counted).
_LISTED_PAIRS = 1000


def build_manifest(
    params: DataParams, *, progress: bool = True, known: StatCache | None = None
) -> tuple[list[Record], PrepareReport]:
    """Scan, inspect, de-duplicate and split a source into manifest records.

    Parameters
    ----------
    params : DataParams
    progress : bool
    known : StatCache, optional
        What earlier runs found in the source's files: unchanged files are not read again, and every
        file read is noted in it (:func:`pipeline.dataset.sources.inspect_all`; the caller saves it).

    Returns
    -------
    records : list of Record
        Sorted by split, label, id.
    report : PrepareReport
        Counts, duplicates, near duplicates (if asked for), sizes and warnings.

    Raises
    ------
    FileNotFoundError
        If ``params.source`` is not a folder.
    BadImageError
        Under ``bad_images: error``, if any image cannot be decoded; the message
        lists every bad file.
    ValueError
        For an empty source, fewer than two classes, classes too small to split,
        or a class with no training image.
    """
    source = Path(params.source)
    is_table = source.suffix.lower() == ".csv" and not source.is_dir()
    scan = (scan_table if is_table else scan_source)(source, path_prefix=params.source)
    log.info(
        "found %d images in %s (%s layout), %d other files ignored",
        len(scan.candidates),
        params.source,
        scan.layout,
        len(scan.ignored),
    )
    good, bad = inspect_all(
        scan.candidates,
        with_phash=params.near_duplicates is not None,
        max_pixels=params.max_image_pixels,
        progress=progress,
        known=known,
    )
    if bad and params.bad_images == "error":
        raise BadImageError(
            f"{len(bad)} image(s) under {params.source} cannot be decoded "
            "(set data.bad_images: skip to leave them out):\n  " + "\n  ".join(bad)
        )
    for message in bad:
        log.warning("skipped: %s", message)
    classes = sorted({c.class_name for c, _ in good})
    report = PrepareReport(
        source=params.source,
        layout=scan.layout,
        classes=classes,
        bad_images_skipped=bad,
        other_files_ignored=scan.ignored,
    )
    report.empty_classes = _empty_classes(scan, classes)
    for name, why in report.empty_classes.items():
        report.warn(f"class folder {name!r} is not a class: {why}")
    if params.duplicates == "remove":
        good, report.duplicates, report.duplicate_groups = remove_duplicates(good)
        if report.duplicates["label_conflicts"]:
            class_of = {c.id: c.class_name for c in scan.candidates}
            conflicts = [g for g in report.duplicate_groups if len({class_of[i] for i in g}) > 1]
            report.warn(
                f"{len(conflicts)} duplicate group(s) are filed under more than one class; the first "
                f"(most held-out) copy's class was kept: {conflicts[:3]}"
            )
    if all(c.split is None for c, _ in good):
        # Split by class name (sorted like the labels), so an error names the class.
        splits = stratified_split([c.class_name for c, _ in good], params.split, params.seed)
        good = [(replace(c, split=str(s)), info) for (c, info), s in zip(good, splits)]
        report.split_policy = f"split by data.split {asdict(params.split)}, stratified by class, seed {params.seed}"
    else:
        good, report.split_policy = _draw_missing_splits(good, params)
    records = [
        Record(
            id=c.id,
            path=c.path,
            label=classes.index(c.class_name),
            class_name=c.class_name,
            split=c.split,
            sha256=info.sha256,
            width=info.width,
            height=info.height,
        )
        for c, info in good
    ]
    records.sort(key=lambda r: (SPLITS.index(r.split), r.label, r.id))
    _check_classes(records, classes)
    if params.near_duplicates is not None:
        hashes = {c.id: info.phash for c, info in good}
        _report_near_duplicates(report, records, [hashes[r.id] for r in records], params.near_duplicates)
    fill_statistics(report, records, small_side=params.small_image_side)
    return records, report


def _draw_missing_splits(good: list, params: DataParams) -> tuple[list, str]:
    """Draw the split(s) a pre-split source lacks out of its training images (policy: :mod:`.layouts`)."""
    given = sorted({c.split for c, _ in good}, key=SPLITS.index)
    policy = f"the given split ({', '.join(given)})"
    for split, fraction in missing_splits(given, params.split).items():
        train = [i for i, (c, _) in enumerate(good) if c.split == "train"]
        drawn = draw_from_train([good[i][0].class_name for i in train], split, fraction, params.seed)
        for i, s in zip(train, drawn):
            good[i] = (replace(good[i][0], split=str(s)), good[i][1])
        policy += (
            f"; {split} drawn from train: {fraction:.1%} of each class's training images "
            f"(data.split.{split} / (data.split.train + data.split.{split})), seed {params.seed}"
        )
        log.info(
            "the source has no %s split: drew %d of its %d training images into it (%.1f%% of each class, seed %d)",
            split,
            int(sum(s == split for s in drawn)),
            len(train),
            100 * fraction,
            params.seed,
        )
    return good, policy


def _report_near_duplicates(
    report: PrepareReport, records: Sequence[Record], hashes: Sequence[int], settings: NearDuplicateParams
) -> None:
    pairs = cross_split_pairs(
        [r.id for r in records], [r.split for r in records], hashes, max_distance=settings.max_distance
    )
    report.near_duplicates = {
        "method": settings.method,
        "max_distance": settings.max_distance,
        "pairs": len(pairs),
        "by_splits": dict(Counter(f"{p.split_a}_{p.split_b}" for p in pairs)),
        "listed": [asdict(p) for p in pairs[:_LISTED_PAIRS]],
    }
    if pairs:
        report.warn(
            f"{len(pairs)} suspected near-duplicate pair(s) across splits (perceptual hashes within "
            f"{settings.max_distance} bits; not removed), closest: {pairs[0].id_a} ~ {pairs[0].id_b}"
        )


def _empty_classes(scan: SourceScan, classes: Sequence[str]) -> dict[str, str]:
    """Why each class folder without a usable image has none."""
    found = Counter(c.class_name for c in scan.candidates)
    return {
        name: (f"all {found[name]} image(s) undecodable (skipped)" if found[name] else "no image files")
        for name in scan.class_folders
        if name not in classes
    }


def _check_classes(records: Sequence[Record], classes: Sequence[str]) -> None:
    counts = Counter((r.class_name, r.split) for r in records)
    missing = [c for c in classes if not counts[c, "train"]]
    if missing:
        where = "; ".join(f"{c!r}: " + ", ".join(f"{s} {counts[c, s]}" for s in SPLITS) for c in missing)
        raise ValueError(
            f"class(es) {missing} have no training images after removing bad files and "
            f"duplicates ({where}); a head could never predict them. Add training images, "
            "or remove the class from every split"
        )
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes with images, found {list(classes)}")
