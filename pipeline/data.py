"""Dataset sources, the manifest, splits and duplicate detection (prepare's core).

A source is a folder in one of two layouts:

- ``<root>/<class>/<image>``: split here, stratified by class, by ratios and a seed;
- ``<root>/{train,val,test}/<class>/<image>``: the given split is kept.

Every image is decoded once (:func:`pipeline.images.inspect_image`) so that a
broken file stops the pipeline here, before any backbone runs, and its content
hash finds exact duplicates. The result is the *manifest*: one row per image
with its path, label, class name, split, sha256, width and height. It is the
only thing later stages read about the dataset.
"""

from __future__ import annotations

import csv
import logging
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from pipeline.config import SPLITS, DataParams, SplitRatios
from pipeline.images import BadImageError, inspect_image, is_image_name, is_junk_name

log = logging.getLogger(__name__)

MANIFEST_FIELDS = ("id", "path", "label", "class_name", "split", "sha256", "width", "height")


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


@dataclass
class PrepareReport:
    """Counts that prepare writes to its JSON report and to DVC metrics."""

    source: str
    layout: str
    classes: list[str]
    images: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    per_class_split: dict[str, dict[str, int]] = field(default_factory=dict)
    bad_images_skipped: list[str] = field(default_factory=list)
    other_files_ignored: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    image_size: dict[str, dict[str, float]] = field(default_factory=dict)
    class_imbalance: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- scanning


def scan_source(root: Path, *, path_prefix: Optional[str] = None) -> tuple[str, list[Candidate], list[str]]:
    """Find the images under a source folder.

    Parameters
    ----------
    root : Path
        The dataset folder.
    path_prefix : str, optional
        How ``root`` is written in paths stored in the manifest (defaults to ``str(root)``).

    Returns
    -------
    layout : {'presplit', 'classes'}
    candidates : list of Candidate, sorted by id
    ignored : list of str
        Files that are neither images nor OS junk (e.g. a README in a class folder).

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
    for split, top in tops:
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir() and not is_junk_name(p)):
            for path in sorted(class_dir.rglob("*")):
                if not path.is_file() or any(is_junk_name(Path(part)) for part in path.relative_to(root).parts):
                    continue
                rel = path.relative_to(root).as_posix()
                if not is_image_name(path):
                    ignored.append(rel)
                    continue
                candidates.append(Candidate(id=rel, path=f"{prefix.rstrip('/')}/{rel}",
                                            class_name=class_dir.name, split=split))
        loose = sorted(p.name for p in top.iterdir() if p.is_file() and not is_junk_name(p))
        ignored.extend(f"{top.relative_to(root).as_posix()}/{n}".lstrip("./") for n in loose)
    if not candidates:
        raise ValueError(f"no images found under {root} (extensions: .jpg .jpeg .png .bmp .gif .webp, any case; "
                         "expected <root>/<class>/<images> or <root>/{train,val,test}/<class>/<images>)")
    return layout, sorted(candidates, key=lambda c: c.id), ignored


def inspect_all(candidates: Sequence[Candidate], *, workers: int = 4, progress: bool = True
                ) -> tuple[list[tuple[Candidate, object]], list[str]]:
    """Decode and hash every candidate in threads (PIL releases the GIL while decoding).

    Returns
    -------
    good : list of (Candidate, ImageInfo)
    bad : list of str
        One message per file that could not be decoded, naming it.
    """
    def one(candidate: Candidate):
        try:
            return candidate, inspect_image(candidate.path), None
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


# --------------------------------------------------------------------------- duplicates


def remove_duplicates(items: list[tuple[Candidate, object]]
                      ) -> tuple[list[tuple[Candidate, object]], dict[str, int], list[list[str]]]:
    """Drop exact duplicates (same sha256): leakage across splits and repeats within one.

    A duplicate that spans splits is kept only in the most held-out split
    (test, then val, then train), so no test image is also trained on; within a
    split, the first by id is kept.

    Returns
    -------
    kept : list of (Candidate, ImageInfo)
    counts : dict
        ``groups`` (hashes seen more than once), ``removed_within_split``,
        ``removed_cross_split`` and, per pair of splits, ``<a>_<b>`` groups straddling them.
    groups : list of list of str
        The ids of each duplicate group, kept one first.
    """
    by_hash: dict[str, list[tuple[Candidate, object]]] = defaultdict(list)
    for item in items:
        by_hash[item[1].sha256].append(item)
    rank = {"test": 0, "val": 1, "train": 2, None: 3}
    kept, groups = [], []
    counts = Counter({"groups": 0, "removed_within_split": 0, "removed_cross_split": 0})
    for members in by_hash.values():
        if len(members) == 1:
            kept.append(members[0])
            continue
        members = sorted(members, key=lambda m: (rank[m[0].split], m[0].id))
        keeper = members[0]
        kept.append(keeper)
        counts["groups"] += 1
        splits = sorted({m[0].split for m in members if m[0].split}, key=SPLITS.index)
        for a_index, a in enumerate(splits):
            for b in splits[a_index + 1:]:
                counts[f"{a}_{b}"] += 1
        for dropped in members[1:]:
            same = dropped[0].split == keeper[0].split
            counts["removed_within_split" if same else "removed_cross_split"] += 1
        groups.append([m[0].id for m in members])
    kept.sort(key=lambda item: item[0].id)
    return kept, dict(counts), groups


# --------------------------------------------------------------------------- splitting


def stratified_split(labels: Sequence[int], ratios: SplitRatios, seed: int) -> np.ndarray:
    """Assign each item to train/val/test, class by class, by ratios.

    Parameters
    ----------
    labels : sequence of int, length n_samples
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
            raise ValueError(f"class {label} has {n} image(s); the split ratios "
                             f"{dict(wanted)} need at least {len(wanted)} per class")
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

    Raises
    ------
    FileNotFoundError
        If ``params.source`` is not a folder.
    BadImageError
        Under ``bad_images: error``, if any image cannot be decoded; the message
        lists every bad file.
    ValueError
        For an empty source, or classes too small to split.
    """
    layout, candidates, ignored = scan_source(Path(params.source), path_prefix=params.source)
    log.info("found %d images in %s (%s layout), %d other files ignored",
             len(candidates), params.source, layout, len(ignored))
    good, bad = inspect_all(candidates, progress=progress)
    if bad and params.bad_images == "error":
        raise BadImageError(f"{len(bad)} image(s) under {params.source} cannot be decoded "
                            "(set data.bad_images: skip to leave them out):\n  " + "\n  ".join(bad))
    for message in bad:
        log.warning("skipped: %s", message)
    classes = sorted({c.class_name for c, _ in good})
    report = PrepareReport(source=params.source, layout=layout, classes=classes,
                           bad_images_skipped=bad, other_files_ignored=ignored)
    if params.duplicates == "remove":
        good, report.duplicates, report.duplicate_groups = remove_duplicates(good)
    if layout == "classes":
        labels = [classes.index(c.class_name) for c, _ in good]
        splits = stratified_split(labels, params.split, params.seed)
        good = [(replace(c, split=str(s)), info) for (c, info), s in zip(good, splits)]
    records = [Record(id=c.id, path=c.path, label=classes.index(c.class_name), class_name=c.class_name,
                      split=c.split, sha256=info.sha256, width=info.width, height=info.height)
               for c, info in good]
    records.sort(key=lambda r: (SPLITS.index(r.split), r.label, r.id))
    _check_classes(records, classes, layout)
    _fill_counts(report, records)
    return records, report


def _check_classes(records: Sequence[Record], classes: Sequence[str], layout: str) -> None:
    present = {(r.class_name, r.split) for r in records}
    missing = [c for c in classes if (c, "train") not in present]
    if missing:
        raise ValueError(f"class(es) {missing} have no training images after "
                         f"{'de-duplication' if layout == 'presplit' else 'splitting'}")
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes, found {classes}")


def _fill_counts(report: PrepareReport, records: Sequence[Record]) -> None:
    report.images = len(records)
    report.per_split = {s: sum(r.split == s for r in records) for s in SPLITS}
    report.per_class_split = {c: {s: sum(r.class_name == c and r.split == s for r in records) for s in SPLITS}
                              for c in report.classes}
    train = [v["train"] for v in report.per_class_split.values()]
    report.class_imbalance = round(max(train) / max(1, min(train)), 3)
    for name in ("width", "height"):
        values = [getattr(r, name) for r in records]
        report.image_size[name] = {"min": min(values), "median": statistics.median(values), "max": max(values)}


def write_manifest(records: Iterable[Record], path: Path) -> None:
    """Write the manifest CSV (one row per image, columns :data:`MANIFEST_FIELDS`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(asdict(record))


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
