"""Which images a stage needs features of, where their bytes are, and whether the store has them already.

The extract stages' DVC input is the catalog stage's list of images
(``data/extraction_hashes.txt``): the dataset's, and those every store already
holds. :func:`dataset_images` picks the dataset's among them; their bytes are
found through the manifest (first record with those bytes), and
:func:`already_extracted` decides from the store's attributes alone — no
backbone built, no TensorFlow imported — that there is nothing to do, once
:func:`damage_to_repair` has read every chunk of the store back against its
digest (a damaged chunk's rows are computed again: there is something to do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import SPLITS, FeatureSetParams
from pipeline.manifest import Record, images_by_hash
from pipeline.store.contents import has_identity, rows_missing, stored_hashes
from pipeline.store.filesystem import Location
from pipeline.store.repair import Damage, find_damage, unrecoverable

log = logging.getLogger(__name__)


def dataset_images(listed: Sequence[str], records: Sequence[Record], *, store: Location) -> list[str]:
    """The images of ``listed`` that are in the dataset (the manifest): the ones to have rows for now.

    A listed image outside the dataset is one every store already had when the
    list was made; if this store lacks it (the store was deleted or replaced by
    hand), it cannot be computed without its file: that is logged, with what to do.
    """
    current = {r.sha256 for r in records}
    elsewhere = [h for h in listed if h not in current]
    if elsewhere:
        lacking = set(elsewhere) - stored_hashes(store)
        if lacking:
            log.warning(
                "%s lacks %d image(s) of the catalog that are no longer in the dataset; they will be "
                "extracted when they are back (`dvc repro --force` on this stage after a store was "
                "deleted by hand)",
                store,
                len(lacking),
            )
    return sorted(h for h in set(listed) if h in current)


def paths_of(records: Sequence[Record], wanted: Sequence[str], *, where: str) -> dict[str, str]:
    """The path of each wanted image, by content hash.

    Raises
    ------
    ValueError
        If the manifest has no image with one of the hashes (``where`` names the list).
    """
    by_hash = images_by_hash(records)
    missing = [h for h in wanted if h not in by_hash]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of {where} are not in the manifest (first sha256 {missing[0]}); "
            "rerun `dvc repro prepare`"
        )
    return {h: by_hash[h].path for h in wanted}


def image_paths(
    records: Sequence[Record], wanted: Sequence[str], *, where: str, damage: Damage | None = None
) -> dict[str, str]:
    """Where the bytes of every image of the manifest are, by content hash: those of ``wanted`` (checked by
    :func:`paths_of`), and the others, which old rows of a damaged chunk may be of.

    Raises
    ------
    ValueError
        If an image of ``wanted`` is not in the manifest.
    StoreError
        If a row of ``damage`` is of an image no longer in the dataset (before any backbone is built).
    """
    paths = {**{h: r.path for h, r in images_by_hash(records).items()}, **paths_of(records, wanted, where=where)}
    if damage:
        lost = sum(h not in paths for h in damage.hashes)
        if lost:
            raise unrecoverable(damage.path, damage.chunks, lost)
    return paths


def damage_to_repair(out: Location, identity: Mapping[str, Any] | None) -> Damage | None:
    """The chunks of the store at ``out`` that fail their digests, if it is the store of ``identity`` (the one
    this extraction adds to: a store of another identity is replaced, not repaired). Every chunk is read.

    Returns
    -------
    Damage or None
        None when ``identity`` is unknown before the backbone is built (the
        store writer then looks itself); empty for a sound store or none.

    Raises
    ------
    StoreError
        If the store is damaged in a way rows cannot repair (:func:`pipeline.store.repair.find_damage`).
    """
    if identity is None:
        return None
    return find_damage(out) if has_identity(out, identity) else Damage(str(out))


def view_images(records: Sequence[Record], *, tta: bool) -> list[str]:
    """The distinct images that get augmented views: the training images, and val and test ones for TTA."""
    splits = SPLITS if tta else ("train",)
    return sorted({r.sha256 for r in records if r.split in splits})


def resolved_cut(spec: FeatureSetParams, check_file: Path | None) -> str | None:
    """The layer the feature set is cut at: from the check stage's file (``cut: null`` and block indices
    resolved), else as given (``None`` for a block index: only building the backbone resolves it).

    Raises
    ------
    ValueError
        If the check file was written for another backbone, weights or size (run the check stage).
    """
    if check_file is None:
        return spec.cut if isinstance(spec.cut, str) else None
    entry = json.loads(Path(check_file).read_text(encoding="utf-8"))
    for name in ("backbone", "weights", "alpha", "preset", "blocks"):
        if entry.get(name) != getattr(spec, name) and not (name == "blocks" and spec.preset is None):
            raise ValueError(
                f"{check_file} was written for {name}={entry.get(name)!r}, but the feature set has "
                f"{getattr(spec, name)!r}; run `dvc repro` (the check stage comes first)"
            )
    return entry["cut"]


def already_extracted(
    out: Location, identity: Mapping[str, Any] | None, wanted: Sequence[str], *, views: int | None = None
) -> bool:
    """Whether the store at ``out`` has this identity and a verified row (and every view) for every wanted image."""
    return identity is not None and rows_missing(out, identity, wanted, views=views) == 0
