"""Damage an extraction repairs: the chunks of a store that fail their digests, and the rows they hold.

A store's rows are proven chunk by chunk (:mod:`pipeline.store.integrity`): a
chunk whose file is missing, does not decode, was changed, or was swapped with
another (each digest is bound to its position) fails its digest. Its rows can
be computed again, since the row index names the image of each: :func:`find_damage`
lists those chunks and rows, and the extraction recomputes exactly them
(:meth:`pipeline.store.writer.StoreWriter.plan` with ``repair``). What rows
cannot repair — an array that is missing or whose metadata is unreadable, a row
index that no longer names one image per row — stops the extraction with one
line naming the store and what to do (:func:`unrepairable`); so does a store
that does not verify once an extraction has written it (:func:`prove_store`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zarr

from pipeline.store import filesystem
from pipeline.store.filesystem import Location
from pipeline.store.integrity import chunk_problems, store_problems
from pipeline.store.layout import StoreError

ChunkKey = tuple[int, int | None]  # (chunk, view); view None in a feature store


@dataclass(frozen=True)
class Damage:
    """The chunks of a store that fail their digests, and the content hashes of the rows they hold."""

    path: str
    chunks: tuple[ChunkKey, ...] = ()
    hashes: tuple[str, ...] = ()  # distinct, in row order

    def __bool__(self) -> bool:
        return bool(self.chunks)


def repairs_of(pending: Mapping[str, Any] | None) -> set[ChunkKey]:
    """The damaged chunks an append recomputes (JSON lists in the store's attributes)."""
    return {(int(chunk), None if view is None else int(view)) for chunk, view in (pending or {}).get("repair") or []}


def as_list(repairs: set[ChunkKey]) -> list[list]:
    """``repairs`` as stored in ``pending`` (and a run's ``repaired_chunks``), in chunk order."""
    return [[chunk, view] for chunk, view in sorted(repairs, key=chunk_order)]


def chunk_order(key: ChunkKey) -> tuple[int, int]:
    """Sort key of (chunk, view): by chunk, the features (view None) first."""
    return key[0], -1 if key[1] is None else key[1]


def describe_chunks(chunks: Sequence[ChunkKey]) -> str:
    """``chunk 3``, ``chunks 0, 3``, ``chunks 1 (views 0, 2), 4 (view 1)``."""
    views: dict[int, list[int]] = {}
    for chunk, view in sorted(chunks, key=chunk_order):
        views.setdefault(chunk, [])
        if view is not None:
            views[chunk].append(view)
    parts = [
        str(chunk) + (f" (view{'s' if len(v) > 1 else ''} {', '.join(map(str, v))})" if v else "")
        for chunk, v in views.items()
    ]
    return f"chunk{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def failing(chunks: Sequence[ChunkKey]) -> str:
    """``chunk 3 fails its digest``, ``chunks 0, 3 fail their digests``."""
    several = len({chunk for chunk, _ in chunks}) > 1 or len(chunks) > 1
    return describe_chunks(chunks) + (" fail their digests" if several else " fails its digest")


def unrepairable(path: Location, problems: Sequence[str]) -> StoreError:
    """The one-line error for damage that rows cannot repair."""
    return StoreError(
        f"{path} cannot be repaired row by row ({'; '.join(problems)}): restore it "
        f"(`dvc checkout {path}`), or delete it and `dvc repro` extracts every image again"
    )


def unrecoverable(path: Location, chunks: Sequence[ChunkKey], rows: int) -> StoreError:
    """The one-line error for damaged chunks holding rows of images whose files are gone."""
    return StoreError(
        f"{path}: {failing(chunks)}, and {rows} row(s) in {'them' if len(chunks) > 1 else 'it'} are of "
        "images no longer in the dataset, whose features cannot be recomputed without their files: put "
        f"those images back, restore the store (`dvc checkout {path}`), or delete it (`dvc repro` then "
        "extracts every image again)"
    )


def find_damage(path: Location) -> Damage:
    """Read every chunk of the verified rows of the store at ``path`` back against its digest.

    Reads as much as ``shoulders verify`` does for the store (about 0.5 s per
    100 MB of stored features on a 2-core machine).

    Returns
    -------
    Damage
        Empty for a sound store, an attributes-only views store, or no store.

    Raises
    ------
    StoreError
        If the store is damaged in a way rows cannot repair (:func:`unrepairable`).
    """
    path = filesystem.normalize(path)
    if not filesystem.exists(filesystem.join(path, "zarr.json")):
        return Damage(str(path))
    group = zarr.open_group(str(path), mode="r")
    if _views_marker(group):
        return Damage(str(path))
    problems = _array_problems(group)
    if problems:
        raise unrepairable(path, problems)
    chunks = tuple(dict.fromkeys((chunk, view) for chunk, view, _ in chunk_problems(path, group)))
    if not chunks:
        return Damage(str(path))
    size, rows = int(group.attrs["chunk_rows"]), int(group.attrs["rows"])
    index = group["sha256"]
    hashes = [
        str(h)
        for chunk in sorted({chunk for chunk, _ in chunks})
        for h in index[chunk * size : min((chunk + 1) * size, rows)].tolist()
    ]
    return Damage(str(path), chunks, tuple(dict.fromkeys(hashes)))


def prove_store(path: Location) -> None:
    """Check every chunk of the store at ``path`` against its digest (and its arrays): what a stage does last,
    so that it never ends successfully on a store that does not verify.

    Raises
    ------
    StoreError
        Naming the store and its first problems.
    """
    path = filesystem.normalize(path)
    group = zarr.open_group(str(path), mode="r")
    if _views_marker(group):
        return
    problems = _array_problems(group) or [problem for _, _, problem in chunk_problems(path, group)]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise StoreError(
            f"{path} does not verify after this extraction ({'; '.join(problems[:3])}{more}); "
            "DVC records nothing of a failed stage: rerun it (`dvc repro`), which recomputes the rows "
            "of damaged chunks"
        )


def _views_marker(group: zarr.Group) -> bool:
    """The attributes-only views store of ``extract.augment.views: 0``."""
    return group.attrs.get("kind") == "views" and int(group.attrs.get("views") or 0) == 0 and "X" not in group


def _array_problems(group: zarr.Group) -> list[str]:
    """:func:`~pipeline.store.integrity.store_problems`, an array that does not read at all among them."""
    try:
        return store_problems(group)
    except Exception as error:  # noqa: BLE001 - zarr raises several types for a damaged zarr.json or index chunk
        return [f"an array does not read ({type(error).__name__}: {error})"]
