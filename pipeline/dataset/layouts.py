"""The dataset layouts prepare accepts, the policy for a split a source lacks, and the message for the rest.

Accepted:

- ``<root>/<class>/<images>``: split by ``data.split``, stratified by class, seeded by ``data.seed``;
- ``<root>/train/<class>/`` with ``test/`` and/or ``val/`` (also spelled ``validation/`` or ``valid/``;
  split folder names are matched in any case): the given split is kept;
- a CSV file ``path,label[,split]`` (:mod:`pipeline.dataset.label_table`).

The missing split, the policy: a pre-split source (folders, or a CSV's ``split`` column) without
``test`` or without ``val`` gets it drawn out of its *training* images, class by class, seeded by
``data.seed``: the share ``data.split.<missing> / (data.split.train + data.split.<missing>)`` of
each class (at least one image), so that train and the drawn split keep the proportion ``data.split``
gives them (17.6% with the default 0.7/0.15/0.15). The given held-out folders are never trained on
and never re-split: a published ``val/`` stays the validation split. With ``data.split.val: 0`` no
validation split is drawn (use ``heads.cv`` then).

Refused, as ambiguous, with a message naming the folders found, the layouts accepted and what to do:
split folders beside other folders; two folders for one split (``val/`` and ``validation/``); split
folders without ``train/``, or ``train/`` alone; class folders that hold split folders
(``<root>/<class>/train/``, the layout inside out); a single folder at the top that holds folders
(the dataset one level down); a split folder that holds images but no class folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.config import SplitRatios
from pipeline.images import is_image_name, is_junk_name

# Folder (or CSV split value) names of each split, compared in lower case.
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}

ACCEPTED = (
    "Layouts accepted: <root>/<class>/<images> (split by data.split); "
    "<root>/train/<class>/ with test/<class>/ and/or val/<class>/ (or validation/), the given split kept "
    "and a missing test or val drawn from train/ (seeded by data.seed); "
    "or data.source: a CSV file with columns path,label[,split] (paths relative to its folder)"
)


def split_folders(root: Path) -> list[tuple[str, Path]]:
    """The split folders of a pre-split source, or ``[]`` for a ``<root>/<class>/`` source.

    Parameters
    ----------
    root : Path
        The dataset folder.

    Returns
    -------
    list of (split, folder)
        In the order train, val, test, for the splits present.

    Raises
    ------
    ValueError
        For an ambiguous layout (module docstring), naming the folders found, the layouts accepted
        and what to do.
    """
    subdirs = _folders(root)
    names = [p.name for p in subdirs]
    by_split: dict[str, list[Path]] = {}
    for path in subdirs:
        if path.name.lower() in SPLIT_NAMES:
            by_split.setdefault(SPLIT_NAMES[path.name.lower()], []).append(path)
    if not by_split:
        _refuse_hidden_splits(root, subdirs)
        return []
    stray = [n for n in names if n.lower() not in SPLIT_NAMES]
    if stray:
        _refuse(
            root,
            names,
            f"it mixes split folders {_listed(by_split)} with other folders {stray}",
            "move the other folders into the split folders (as <split>/<class>/) or out of the dataset folder",
        )
    for split, paths in by_split.items():
        if len(paths) > 1:
            _refuse(
                root,
                names,
                f"{len(paths)} folders are the {split} split: {[p.name for p in paths]}",
                "merge them into one, or move one out of the dataset folder",
            )
    if "train" not in by_split:
        _refuse(
            root,
            names,
            f"it has split folders {_listed(by_split)} but no train/",
            "name the folder of the training images train/",
        )
    if len(by_split) == 1:
        _refuse(
            root,
            names,
            "it has a train/ folder and no val/ or test/",
            "add test/ (or val/), or move the class folders up out of train/ to have them split by data.split",
        )
    for (path,) in by_split.values():
        if not _folders(path) and any(is_image_name(p) for p in path.iterdir() if p.is_file()):
            _refuse(
                root,
                names,
                f"{path.name}/ holds images but no class folders",
                f"put its images in one folder per class: {path.name}/<class>/<images>",
            )
    return [(split, by_split[split][0]) for split in ("train", "val", "test") if split in by_split]


def missing_splits(present: Sequence[str], ratios: SplitRatios) -> dict[str, float]:
    """The splits a pre-split source lacks that are drawn from its training images, with each one's share.

    Parameters
    ----------
    present : sequence of str
        The splits the source gives (must include 'train').
    ratios : SplitRatios
        ``data.split``: the share of each drawn split is ``ratio / (ratio + train)``; a zero ratio draws none.

    Returns
    -------
    dict of str to float
        Split name → share of each class's training images drawn into it.
    """
    return {
        split: getattr(ratios, split) / (getattr(ratios, split) + ratios.train)
        for split in ("val", "test")
        if split not in present and getattr(ratios, split) > 0
    }


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not is_junk_name(p))


def _refuse_hidden_splits(root: Path, subdirs: Sequence[Path]) -> None:
    names = [p.name for p in subdirs]
    if len(subdirs) == 1 and _folders(subdirs[0]):
        inner = [p.name for p in _folders(subdirs[0])]
        _refuse(
            root,
            names,
            f"it holds one folder, {subdirs[0].name}/, which holds the folders {inner}",
            f"point data.source at {root / subdirs[0].name}",
        )
    inside_out = {p.name: [q.name for q in _folders(p) if q.name.lower() in SPLIT_NAMES] for p in subdirs}
    if subdirs and all(inside_out.values()):
        first = subdirs[0].name
        _refuse(
            root,
            names,
            f"its class folders hold split folders ({first}/{inside_out[first][0]}/, ...): the layout inside out",
            "rearrange it as <root>/<split>/<class>/<images>",
        )


def _listed(by_split: dict[str, list[Path]]) -> list[str]:
    return sorted(p.name for paths in by_split.values() for p in paths)


def _refuse(root: Path, found: Sequence[str], why: str, fix: str) -> None:
    raise ValueError(
        f"data.source {str(root)!r} has an ambiguous layout: {why} (folders found: {list(found)}). "
        f"{ACCEPTED}. To use this one: {fix}"
    )
