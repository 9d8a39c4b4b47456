"""Dataset sources, the manifest, splits and duplicate detection (prepare's core).

A source is a folder in one of two layouts:

- ``<root>/<class>/<image>``: split here, stratified by class, by ratios and a seed;
- ``<root>/{train,val,test}/<class>/<image>``: the given split is kept.

Every image is decoded once (:func:`pipeline.images.inspect_image`) so that a
broken file stops the pipeline here, before any backbone runs, and its content
hash finds exact duplicates (:mod:`pipeline.duplicates`). The result is the
*manifest*: one row per image with its path, label, class name, split, sha256,
width and height. It is the only thing later stages read about the dataset.

A class folder that ends up with no usable image (empty, only non-image files,
or every image undecodable and skipped) is not a class: it gets no label and is
listed under ``empty_classes`` in the report with a warning. A class with
images in val or test but none in train is an error, since no head could ever
predict it.
"""

from __future__ import annotations

import csv
import logging
import os
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Hashable, Iterable, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from pipeline.config import SPLITS, DataParams, NearDuplicateParams, SplitRatios
from pipeline.dataset_report import PrepareReport, fill_statistics
from pipeline.duplicates import cross_split_pairs, remove_duplicates
from pipeline.images import BadImageError, ImageInfo, inspect_image, is_image_name, is_junk_name

log = logging.getLogger(__name__)

MANIFEST_FIELDS = ("id", "path", "label", "class_name", "split", "sha256", "width", "height")
# Near-duplicate pairs listed in the report (all are counted).
_LISTED_PAIRS = 1000


@dataclass(frozen=True)
class Record:
    """One image of the manifest."""

    id: str            # path relative to the source root, POSIX separators
    path: str          # path to open, relative to the project root (or absolute)
    label: int
    class_name: str
    split: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Candidate:
    """An image file found in the source, before it is inspected."""

    id: str
    path: str
    class_name: str
    split: Optional[str]   # None until split, unless the source is pre-split


@dataclass(frozen=True)
class SourceScan:
    """What :func:`scan_source` found under a dataset folder."""

    layout: str                  # 'presplit' or 'classes'
    candidates: list[Candidate]  # image files, sorted by id
    ignored: list[str]           # other files (not images, not OS junk), relative to the root
    class_folders: list[str]     # every class folder name, with or without images, sorted


# --------------------------------------------------------------------------- scanning


def scan_source(root: Path, *, path_prefix: Optional[str] = None) -> SourceScan:
    """Find the images under a source folder.

    Hidden files and folders and OS clutter (:func:`pipeline.images.is_junk_name`)
    are skipped silently; other files without an image extension are listed in
    ``ignored``.

    Parameters
    ----------
    root : Path
        The dataset folder.
    path_prefix : str, optional
        How ``root`` is written in paths stored in the manifest (defaults to ``str(root)``).

    Returns
    -------
    SourceScan

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    ValueError
        If no class folders or no images are found, or a pre-split tree lacks train/ or test/.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.source {str(root)!r} is not a folder "
                                "(expected <root>/<class>/<images> or <root>/{train,val,test}/<class>/<images>)")
    prefix = path_prefix if path_prefix is not None else str(root)
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_junk_name(p))
    presplit = [s for s in SPLITS if s in subdirs]
    if presplit:
        for needed in ("train", "test"):
            if needed not in presplit:
                raise ValueError(f"{root} has {presplit} folders but no {needed}/: a pre-split source "
                                 "needs train/ and test/ (val/ is optional)")
        stray = [d for d in subdirs if d not in SPLITS]
        if stray:
            raise ValueError(f"{root} mixes split folders {presplit} with other folders {stray}; "
                             "use either <root>/{train,val,test}/<class>/ or <root>/<class>/")
        layout, tops = "presplit", [(s, root / s) for s in presplit]
    else:
        layout, tops = "classes", [(None, root)]
    candidates: list[Candidate] = []
    ignored: list[str] = []
    class_folders: set[str] = set()
    for split, top in tops:
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir() and not is_junk_name(p)):
            class_folders.add(class_dir.name)
            for path in sorted(class_dir.rglob("*")):
                if not path.is_file() or any(is_junk_name(Path(part)) for part in path.relative_to(root).parts):
                    continue
                rel = path.relative_to(root).as_posix()
                if not is_image_name(path):
                    ignored.append(rel)
                    continue
                candidates.append(Candidate(id=rel, path=f"{prefix.rstrip('/')}/{rel}",
                                            class_name=class_dir.name, split=split))
    # Files lying beside the class folders (or beside the split folders) are not images of a class.
    for top in ([root] if layout == "classes" else [root, *(t for _, t in tops)]):
        loose = sorted(p for p in top.iterdir() if p.is_file() and not is_junk_name(p))
        ignored.extend(p.relative_to(root).as_posix() for p in loose)
    if not candidates:
        raise ValueError(f"no images found under {root} (extensions: .jpg .jpeg .png .bmp .gif .webp, any case; "
                         "expected <root>/<class>/<images> or <root>/{train,val,test}/<class>/<images>)")
    return SourceScan(layout=layout, candidates=sorted(candidates, key=lambda c: c.id), ignored=sorted(ignored),
                      class_folders=sorted(class_folders))


def inspect_all(candidates: Sequence[Candidate], *, with_phash: bool = False, workers: int = 4,
                progress: bool = True) -> tuple[list[tuple[Candidate, ImageInfo]], list[str]]:
    """Decode and hash every candidate in threads (PIL releases the GIL while decoding).

    Parameters
    ----------
    candidates : sequence of Candidate
    with_phash : bool
        Also compute each image's perceptual hash (for near-duplicate search).
    workers : int
        Decoding threads.
    progress : bool

    Returns
    -------
    good : list of (Candidate, ImageInfo)
    bad : list of str
        One message per file that could not be decoded, naming it.
    """
    def one(candidate: Candidate):
        try:
            return candidate, inspect_image(candidate.path, with_phash=with_phash), None
        except (BadImageError, OSError) as error:
            return candidate, None, str(error)

    good, bad = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(one, candidates)
        for candidate, info, error in tqdm(results, total=len(candidates), desc="inspect images",
                                           unit="img", disable=not progress):
            if error is None:
                good.append((candidate, info))
            else:
                bad.append(error)
    return good, bad


# --------------------------------------------------------------------------- splitting


def stratified_split(labels: Sequence[Hashable], ratios: SplitRatios, seed: int) -> np.ndarray:
    """Assign each item to train/val/test, class by class, by ratios.

    Parameters
    ----------
    labels : sequence of int or str, length n_samples
        Class of each item; class names give error messages that name the class.
    ratios : SplitRatios
    seed : int

    Returns
    -------
    ndarray of shape (n_samples,), dtype object
        'train', 'val' or 'test' per item. Every split with a non-zero ratio gets
        at least one item of every class; the assignment depends only on the
        labels' order, the ratios and the seed.

    Raises
    ------
    ValueError
        If a class has fewer items than splits with a non-zero ratio.
    """
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=object)
    wanted = [(name, getattr(ratios, name)) for name in SPLITS if getattr(ratios, name) > 0]
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = len(members)
        if n < len(wanted):
            raise ValueError(f"class {label.item()!r} has {n} image(s); the split ratios {dict(wanted)} "
                             f"need at least {len(wanted)} per class (add images to it, remove its folder, "
                             "or set a ratio in data.split to 0)")
        counts = _allocate(n, [r for _, r in wanted])
        order = members[rng.permutation(n)]
        start = 0
        for (name, _), count in zip(wanted, counts):
            out[order[start:start + count]] = name
            start += count
    return out


def _allocate(n: int, ratios: Sequence[float]) -> list[int]:
    # Largest remainder, then make sure every split gets at least one item.
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i, c in enumerate(counts):
        if c == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] = 1
    return counts


# --------------------------------------------------------------------------- the manifest


def build_manifest(params: DataParams, *, progress: bool = True) -> tuple[list[Record], PrepareReport]:
    """Scan, inspect, de-duplicate and split a source into manifest records.

    Parameters
    ----------
    params : DataParams
    progress : bool

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
    scan = scan_source(Path(params.source), path_prefix=params.source)
    log.info("found %d images in %s (%s layout), %d other files ignored",
             len(scan.candidates), params.source, scan.layout, len(scan.ignored))
    good, bad = inspect_all(scan.candidates, with_phash=params.near_duplicates is not None, progress=progress)
    if bad and params.bad_images == "error":
        raise BadImageError(f"{len(bad)} image(s) under {params.source} cannot be decoded "
                            "(set data.bad_images: skip to leave them out):\n  " + "\n  ".join(bad))
    for message in bad:
        log.warning("skipped: %s", message)
    classes = sorted({c.class_name for c, _ in good})
    report = PrepareReport(source=params.source, layout=scan.layout, classes=classes,
                           bad_images_skipped=bad, other_files_ignored=scan.ignored)
    report.empty_classes = _empty_classes(scan, classes)
    for name, why in report.empty_classes.items():
        report.warn(f"class folder {name!r} is not a class: {why}")
    if params.duplicates == "remove":
        good, report.duplicates, report.duplicate_groups = remove_duplicates(good)
        if report.duplicates["label_conflicts"]:
            class_of = {c.id: c.class_name for c in scan.candidates}
            conflicts = [g for g in report.duplicate_groups if len({class_of[i] for i in g}) > 1]
            report.warn(f"{len(conflicts)} duplicate group(s) are filed under more than one class; the first "
                        f"(most held-out) copy's class was kept: {conflicts[:3]}")
    if scan.layout == "classes":
        # Split by class name (sorted like the labels), so an error names the class.
        splits = stratified_split([c.class_name for c, _ in good], params.split, params.seed)
        good = [(replace(c, split=str(s)), info) for (c, info), s in zip(good, splits)]
    records = [Record(id=c.id, path=c.path, label=classes.index(c.class_name), class_name=c.class_name,
                      split=c.split, sha256=info.sha256, width=info.width, height=info.height)
               for c, info in good]
    records.sort(key=lambda r: (SPLITS.index(r.split), r.label, r.id))
    _check_classes(records, classes)
    if params.near_duplicates is not None:
        hashes = {c.id: info.phash for c, info in good}
        _report_near_duplicates(report, records, [hashes[r.id] for r in records], params.near_duplicates)
    fill_statistics(report, records, small_side=params.small_image_side)
    return records, report


def _report_near_duplicates(report: PrepareReport, records: Sequence[Record], hashes: Sequence[int],
                            settings: NearDuplicateParams) -> None:
    pairs = cross_split_pairs([r.id for r in records], [r.split for r in records], hashes,
                              max_distance=settings.max_distance)
    report.near_duplicates = {
        "method": settings.method, "max_distance": settings.max_distance, "pairs": len(pairs),
        "by_splits": dict(Counter(f"{p.split_a}_{p.split_b}" for p in pairs)),
        "listed": [asdict(p) for p in pairs[:_LISTED_PAIRS]]}
    if pairs:
        report.warn(f"{len(pairs)} suspected near-duplicate pair(s) across splits (perceptual hashes within "
                    f"{settings.max_distance} bits; not removed), closest: {pairs[0].id_a} ~ {pairs[0].id_b}")


def _empty_classes(scan: SourceScan, classes: Sequence[str]) -> dict[str, str]:
    """Why each class folder without a usable image has none."""
    found = Counter(c.class_name for c in scan.candidates)
    return {name: (f"all {found[name]} image(s) undecodable (skipped)" if found[name] else "no image files")
            for name in scan.class_folders if name not in classes}


def _check_classes(records: Sequence[Record], classes: Sequence[str]) -> None:
    counts = Counter((r.class_name, r.split) for r in records)
    missing = [c for c in classes if not counts[c, "train"]]
    if missing:
        where = "; ".join(f"{c!r}: " + ", ".join(f"{s} {counts[c, s]}" for s in SPLITS) for c in missing)
        raise ValueError(f"class(es) {missing} have no training images after removing bad files and "
                         f"duplicates ({where}); a head could never predict them. Add training images, "
                         "or remove the class from every split")
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes with images, found {list(classes)}")


def write_manifest(records: Iterable[Record], path: Path) -> None:
    """Write the manifest CSV (one row per image, columns :data:`MANIFEST_FIELDS`).

    The file is written beside ``path`` and renamed over it, so a failed write
    (a full disk) leaves the previous manifest whole instead of truncated.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
            writer.writeheader()
            for record in records:
                writer.writerow(asdict(record))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(path: Path | str) -> list[Record]:
    """Read a manifest written by :func:`write_manifest`.

    Raises
    ------
    FileNotFoundError
        If there is no manifest (run the prepare stage first).
    ValueError
        If its columns are not :data:`MANIFEST_FIELDS`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}; run `dvc repro prepare` first")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
            raise ValueError(f"{path} has columns {reader.fieldnames}; expected {list(MANIFEST_FIELDS)}")
        return [Record(id=row["id"], path=row["path"], label=int(row["label"]), class_name=row["class_name"],
                       split=row["split"], sha256=row["sha256"], width=int(row["width"]),
                       height=int(row["height"])) for row in reader]


def class_names(records: Sequence[Record]) -> list[str]:
    """Class names indexed by label."""
    names = {r.label: r.class_name for r in records}
    return [names[i] for i in range(len(names))]
