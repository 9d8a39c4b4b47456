"""What a store holds, read from its attributes and row index alone (no chunk is read): identity, rows, hashes.

What an extraction asks before it builds a backbone: is there a store of this
identity, which rows does it hold, does it lack any wanted image. Stores at
local paths and fsspec URLs alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import zarr

from pipeline.store import filesystem
from pipeline.store.filesystem import Location
from pipeline.store.layout import STORE_FORMAT


def as_stored(mapping: Mapping[str, Any]) -> dict:
    """``mapping`` as zarr stores attributes (JSON), so that comparisons with what a store holds are exact."""
    return json.loads(json.dumps(dict(mapping)))


def has_identity(path: Location, identity: Mapping[str, Any] | None) -> bool:
    """Whether the store at ``path`` is a readable store of ``identity`` (the one an extraction of it extends)."""
    return identity is not None and read_identity(path) == as_stored(identity)


def rows_missing(
    path: Location, identity: Mapping[str, Any], wanted: Sequence[str], *, views: int | None = None
) -> int | None:
    """How many images of ``wanted`` the store at ``path`` lacks (views: or lacks a view of), read from its
    attributes and index alone; ``None`` when there is no store of this identity or an append is pending."""
    if read_identity(path) != as_stored(identity):
        return None
    group = zarr.open_group(str(filesystem.normalize(path)), mode="r")
    attrs = group.attrs
    if attrs.get("pending") or (views is not None and int(attrs.get("views") or 0) != views):
        return None
    if "sha256" not in group:
        return None
    rows = int(attrs["rows"])
    have = set(group["sha256"][:rows].tolist()) if rows else set()
    return len(set(wanted) - have)


def stored_rows(path: Location) -> int:
    """Verified rows of the store at ``path`` (0 when there is none)."""
    if not filesystem.exists(filesystem.join(path, "zarr.json")):
        return 0
    return int(zarr.open_group(str(filesystem.normalize(path)), mode="r").attrs.get("rows") or 0)


def stored_hashes(path: Location) -> set[str]:
    """The content hashes of the verified rows of the store at ``path`` (empty when there is none)."""
    rows = stored_rows(path)
    if not rows:
        return set()
    return set(zarr.open_group(str(filesystem.normalize(path)), mode="r")["sha256"][:rows].tolist())


def read_identity(path: Location) -> dict | None:
    """The identity recorded in the store at ``path``, or ``None`` when there is no readable store of this format."""
    if not filesystem.exists(filesystem.join(path, "zarr.json")):
        return None
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs
    except (FileNotFoundError, ValueError):
        return None
    return dict(attrs["identity"]) if attrs.get("shoulders_store") == STORE_FORMAT else None
