"""Removing rows of images no longer in the dataset (``shoulders gc``).

Rows are never removed by an extraction: an image dropped from the dataset may
come back (another experiment, the previous split), and its features are then
free. :func:`collect_garbage` rewrites a store with only the rows of the
images to keep, in their old order, each kept row copied bit for bit; the new
store is built beside the old one, its chunks digested as an extraction does,
and swapped into place, so an interruption leaves the old store whole. It holds
the store's lock meanwhile (:mod:`pipeline.store.lock`): gc never rewrites a
store an extraction is writing. Readers are not locked out: one that was
reading the old store when the new one was swapped in starts over on it
(:func:`pipeline.store.reader.read_consistently`), never reporting the
swapped chunks as damage.

Which rows go is decided by ``keep`` alone: rows of images in none of the
manifests the caller gives (``shoulders gc --keep OTHER.csv`` adds one) go,
even those another experiment (queued, or on another split or dataset) would
need: it then computes them again. :class:`Collected` names them, by content
hash, and a dry run removes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import zarr

from pipeline.store import filesystem
from pipeline.store.filesystem import Location
from pipeline.store.integrity import chunk_digest, read_chunk
from pipeline.store.layout import VIEWS_DIR, StoreError, create_array, create_index, n_chunks
from pipeline.store.lock import locked
from pipeline.store.writer import create_group, swap_into_place

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collected:
    """What gc did (or, in a dry run, would do) to one store."""

    path: str
    rows_before: int
    rows_after: int
    removed_hashes: tuple[str, ...] = ()  # the content hashes of the rows removed, in row order

    @property
    def removed(self) -> int:
        return self.rows_before - self.rows_after


def collect_garbage(path: Location, keep: Collection[str], *, dry_run: bool = False) -> Collected:
    """Rewrite the store at ``path`` with only the rows whose content hash is in ``keep``.

    Parameters
    ----------
    path : Location
        A feature store or views store.
    keep : collection of str
        The content hashes whose rows stay: the images of every manifest that still matters.
    dry_run : bool
        Only say what would go; the store is not touched.

    Returns
    -------
    Collected
        Rows before and after, and the content hashes of the rows removed (or that would be).

    Raises
    ------
    StoreError
        If an extraction into the store is pending (finish it with ``dvc repro`` first) or running,
        or a chunk fails its digest while being copied.
    """
    path = filesystem.normalize(path)
    # Locked before anything is read (a views store lives in the views folder: layout.views_path).
    with locked(path, views=filesystem.name(filesystem.parent(path)) == VIEWS_DIR, what="gc"):
        return _collect(path, keep, dry_run=dry_run)


def _collect(path: Location, keep: Collection[str], *, dry_run: bool) -> Collected:
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if "X" not in group:  # an attributes-only views marker
        return Collected(str(path), 0, 0)
    if attrs.get("pending"):
        raise StoreError(f"{path}: an extraction into it is pending; run `dvc repro` to finish it before gc")
    rows = int(attrs["rows"])
    hashes = [str(h) for h in group["sha256"][:rows].tolist()] if rows else []
    keep = set(keep)
    kept = np.array([i for i, h in enumerate(hashes) if h in keep], dtype=np.int64)
    result = Collected(str(path), rows, len(kept), tuple(h for h in hashes if h not in keep))
    if dry_run or len(kept) == rows:
        return result
    X = group["X"]
    chunk_rows, views = int(attrs["chunk_rows"]), attrs.get("views")
    per_view = [None] if views is None else list(range(int(views)))
    digests = attrs["chunk_digests"]
    new_digests: list = []

    def fill(new: zarr.Group) -> None:
        out = create_array(new, "X", (len(kept), *X.shape[1:]), X.chunks, X.dtype)
        create_index(new, len(kept))
        if len(kept):
            new["sha256"][:] = np.asarray([hashes[i] for i in kept], dtype=str)
        create_array(
            new,
            "done",
            (n_chunks(len(kept), chunk_rows), *([len(per_view)] if views is not None else [])),
            (1, *([1] if views is not None else [])),
            "uint8",
        )[...] = 1
        cache: dict[tuple[int, object], np.ndarray] = {}
        for target in range(n_chunks(len(kept), chunk_rows)):
            sources = kept[target * chunk_rows : (target + 1) * chunk_rows]
            entry = []
            for view in per_view:
                parts = []
                for source_chunk in np.unique(sources // chunk_rows):
                    key = (int(source_chunk), view)
                    if key not in cache:
                        if len(cache) > 2 * len(per_view):  # kept rows are in order: old chunks are done with
                            cache.clear()
                        expected = digests[source_chunk] if view is None else digests[source_chunk][view]
                        cache[key] = read_chunk(path, X, int(source_chunk), rows, expected, view)
                    picked = sources[sources // chunk_rows == source_chunk] - source_chunk * chunk_rows
                    parts.append(cache[key][picked])
                block = np.concatenate(parts)
                span = slice(target * chunk_rows, target * chunk_rows + len(block))
                if view is None:
                    out[span] = block
                else:
                    out[span, view] = block
                entry.append(chunk_digest(block, target, view))
            new_digests.append(entry[0] if views is None else entry)

    runs = list(attrs.get("runs") or [])
    runs.append(
        {
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gc": True,
            "rows_before": rows,
            "rows_after": int(len(kept)),
        }
    )
    tmp = filesystem.join(filesystem.parent(path), filesystem.name(path) + ".gc")
    new = create_group(tmp, {**attrs, "rows": int(len(kept)), "chunk_digests": [], "runs": runs}, fill)
    new.attrs["chunk_digests"] = new_digests
    swap_into_place(tmp, path)
    log.info(
        "gc %s: %d rows kept, %d removed (images in none of the manifests kept)", path, len(kept), rows - len(kept)
    )
    return result
