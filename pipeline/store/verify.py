"""Cache integrity: check every feature store against its bytes, params and the current dataset.

``shoulders verify`` (or ``python -m pipeline verify``) calls :func:`verify_features`
on ``features/``. Each store ``<key>.zarr`` (and each views store under
``features/views/``) is

- **corrupt** if a chunk of its verified rows is missing (zarr would read it
  as zeros), does not decode (zstd checksums catch flipped bytes), does not
  match the digest recorded when it was written (changed, or swapped with
  another chunk: the digest is bound to the chunk's position), holds NaN or
  Inf, or if its index of content hashes is shorter than its rows, repeats one
  or holds something else (the next ``dvc repro`` recomputes the rows of
  damaged chunks, :mod:`pipeline.store.repair`; a damaged index or array
  stops it with what to do);
- **incomplete** if an extraction into it was interrupted (the next
  ``dvc repro`` resumes it);
- **stale** if its identity differs from what the feature set of the same key
  in ``params.yaml`` gives (backbone, weights and their hash, cut, input size,
  alpha, dtype, preprocessing, seed of random weights; the fields are named),
  or if images of the current manifest have no row in it;
- **orphan** if ``params.yaml`` has no feature set of that key;
- otherwise **ok**. Rows of images no longer in the dataset are counted (not a
  failure; ``shoulders gc`` removes them).

Partial stores left in ``features/.incomplete/`` (a new identity being built),
temporary folders of an interrupted swap and feature sets without a store are
listed too (``partial``, ``leftover``, ``missing``) but are not failures.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.cli.progress import progress_bar
from pipeline.config import FeatureSetParams, Params
from pipeline.manifest import read_manifest
from pipeline.store.integrity import chunk_problems, store_problems
from pipeline.store.layout import INCOMPLETE_DIR, STORE_FORMAT, VIEWS_DIR
from pipeline.store.reader import provenance_of

FAILING_STATES = ("corrupt", "incomplete", "stale", "orphan")


@dataclass(frozen=True)
class StoreReport:
    """The verdict on one store (or leftover) under the features folder."""

    key: str
    path: str
    state: str  # ok | corrupt | incomplete | stale | orphan | partial | leftover | missing
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # not problems: e.g. rows of images no longer in the dataset

    @property
    def failing(self) -> bool:
        return self.state in FAILING_STATES


# --------------------------------------------------------------------------- the whole folder


def verify_features(
    features_dir: Path | str,
    params: Params,
    manifest: Path | str | None = None,
    *,
    checks: Path | str | None = None,
    progress: bool = False,
) -> list[StoreReport]:
    """Verify every store under ``features_dir`` (and its views stores) and list leftovers.

    Parameters
    ----------
    features_dir : path-like
        The folder of ``<key>.zarr`` stores.
    params : Params
        The current parameters (feature sets and extract settings).
    manifest : path-like, optional
        The current manifest: every image of it must have a row (training images,
        and val/test with TTA, a view too). If absent (or the file does not
        exist) this comparison is skipped and said so.
    checks : path-like, optional
        The check stage's folder (``reports/checks``), which resolves ``cut: null``.
    progress : bool

    Returns
    -------
    list of StoreReport
        Stores sorted by key (views stores after them), then leftovers and missing stores.
    """
    root = Path(features_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no features folder at {root}")
    records = read_manifest(manifest) if manifest is not None and Path(manifest).is_file() else None
    stores = sorted(root.glob("*.zarr")) + sorted((root / VIEWS_DIR).glob("*.zarr"))
    reports = []
    for path in progress_bar(stores, desc="verify stores", unit="store", enabled=progress):
        views = path.parent.name == VIEWS_DIR
        spec = params.features.get(path.stem)
        expected = None if spec is None else _expected_identity(spec, params, checks, path.stem, views=views)
        wanted = None
        if records is not None:
            from pipeline.extraction.wanted import view_images

            wanted = (
                view_images(records, tta=params.extract.augment.tta) if views else sorted({r.sha256 for r in records})
            )
        report = verify_store(path, expected=expected, wanted=wanted, key=("views/" if views else "") + path.stem)
        if manifest is not None and records is None:
            report = _with(report, notes=(*report.notes, f"manifest {manifest} not found: rows not compared"))
        reports.append(report)
    reports += _leftovers(root)
    present = {p.stem for p in stores if p.parent == root}
    reports += [
        StoreReport(key, str(root / f"{key}.zarr"), "missing", ("not extracted yet",))
        for key in sorted(params.features)
        if key not in present
    ]
    return reports


def _expected_identity(
    spec: FeatureSetParams, params: Params, checks: Path | str | None, key: str, *, views: bool
) -> dict:
    """The identity params give a store of ``spec``; what depends on the device is left out."""
    from pipeline.extraction.plan import planned_identity

    check = Path(checks) / f"{key}.json" if checks is not None else None
    cut = json.loads(check.read_text(encoding="utf-8"))["cut"] if check is not None and check.is_file() else spec.cut
    settings = params.extract
    auto = settings.precision == "auto"
    if auto:  # the compute precision (float32 stores only) depends on the device: not compared
        settings = dataclasses.replace(settings, precision="float32")
    identity = planned_identity(spec, settings, cut or "", views=views)
    if auto:
        identity.pop("compute", None)
    if cut is None:
        del identity["cut"]  # cut: null, unresolved: checked as "the last layer" (identity_problems)
    return identity


def _leftovers(root: Path) -> list[StoreReport]:
    out = []
    for path in sorted((root / INCOMPLETE_DIR).glob("*.zarr")):
        key = path.stem.rsplit("-", 1)[0]
        out.append(StoreReport(key, str(path), "partial", (_partial_progress(path),)))
    for folder in (root, root / VIEWS_DIR, root / INCOMPLETE_DIR):
        for path in sorted(folder.glob("*.zarr.*.new")) + sorted(folder.glob("*.zarr.*.old")):
            key = path.name.split(".zarr.")[0]
            whole = (folder / f"{key}.zarr").exists()
            hint = (
                "safe to delete"
                if whole or path.suffix == ".new"
                else f"{key}.zarr is missing: this is its previous version, rename it back"
            )
            out.append(StoreReport(key, str(path), "leftover", (f"left by an interrupted create or swap; {hint}",)))
    return out


def _partial_progress(path: Path) -> str:
    try:
        group = zarr.open_group(path, mode="r")
        done = int(np.asarray(group["done"][...]).sum())
        total = int(group["done"].size)
    except Exception as error:  # noqa: BLE001 - any unreadable partial is reported, never fatal
        return f"unreadable partial store ({type(error).__name__}: {error}); safe to delete"
    return f"{done} of {total} chunks written; the next extraction of this identity resumes it"


def _with(report: StoreReport, **changes: Any) -> StoreReport:
    return StoreReport(**{**report.__dict__, **changes})


# --------------------------------------------------------------------------- one store


def verify_store(
    path: Path | str,
    *,
    expected: dict | None = None,
    wanted: Sequence[str] | None = None,
    key: str | None = None,
) -> StoreReport:
    """Check one store's chunks against their digests, its index, its identity and its rows.

    Parameters
    ----------
    path : path-like
        A ``<key>.zarr`` folder.
    expected : dict, optional
        The identity params give it (see :func:`verify_features`); None marks the store an orphan.
    wanted : sequence of str, optional
        The content hashes that must have a row (the current manifest's).
    key : str, optional
        How the report names the store (default: its folder's stem).

    Returns
    -------
    StoreReport
        The worst state found (corrupt, incomplete, stale, orphan, ok) and every problem.
    """
    path = Path(path)
    key = key or path.stem
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as error:  # noqa: BLE001 - an unreadable store is a verdict, not a crash
        return StoreReport(key, str(path), "corrupt", (f"not a readable Zarr group ({error})",))
    if attrs.get("shoulders_store") != STORE_FORMAT:
        return StoreReport(
            key,
            str(path),
            "corrupt",
            (f"not a shoulders store of format {STORE_FORMAT} (shoulders_store={attrs.get('shoulders_store')!r})",),
        )
    marker = attrs.get("kind") == "views" and int(attrs.get("views") or 0) == 0 and "X" not in group
    try:
        corrupt = [] if marker else integrity_problems(group, path)
    except Exception as error:  # noqa: BLE001 - e.g. an array's own zarr.json is damaged
        corrupt = [f"unreadable array metadata ({type(error).__name__}: {error})"]
    incomplete = ["an extraction into it was interrupted; `dvc repro` resumes it"] if attrs.get("pending") else []
    identity = attrs.get("identity") or {}
    stale = [] if expected is None else identity_problems(identity, expected, group)
    notes: list[str] = []
    if wanted is not None and not corrupt and not marker:
        rows = int(attrs["rows"])
        have = set(group["sha256"][:rows].tolist()) if rows else set()
        lacking = len(set(wanted) - have)
        if lacking:
            stale.append(f"{lacking} image(s) of the current manifest have no row; `dvc repro` extracts them")
        extra = len(have - set(wanted))
        if extra:
            notes.append(f"{extra} row(s) of images no longer in the dataset (`shoulders gc` removes them)")
    orphan = ["no feature set of this key in params.yaml"] if expected is None else []
    for state, problems in (("corrupt", corrupt), ("incomplete", incomplete), ("stale", stale), ("orphan", orphan)):
        if problems:
            return StoreReport(key, str(path), state, tuple(corrupt + incomplete + stale + orphan), tuple(notes))
    return StoreReport(key, str(path), "ok", (), tuple(notes))


def identity_problems(identity: dict, expected: dict, group: zarr.Group) -> list[str]:
    """One line per identity field that differs from ``expected`` (and an unresolved ``cut: null`` check)."""
    problems = [
        f"{name}: store has {identity.get(name)!r}, params say {value!r}"
        for name, value in expected.items()
        if identity.get(name) != value
    ]
    if "cut" not in expected:
        provenance = provenance_of(group)
        index, count = provenance.get("cut_index"), provenance.get("n_layers")
        if index is None or count is None or index != count - 1:
            problems.append(
                f"cut: params say the last layer (cut: null), store is cut at "
                f"{identity.get('cut')!r} (layer {index} of {count})"
            )
    return problems


def integrity_problems(group: zarr.Group, path: Path) -> list[str]:
    """Everything wrong with a store's arrays: missing, undecodable, changed or swapped chunks, bad values, a
    damaged index (:func:`~pipeline.store.integrity.store_problems`, then
    :func:`~pipeline.store.integrity.chunk_problems`)."""
    problems = store_problems(group)
    if problems:
        return problems
    return [problem for _, _, problem in chunk_problems(path, group)]


def render(reports: Sequence[StoreReport]) -> str:
    """A plain-text table of the reports, problems (and notes) indented under each."""
    if not reports:
        return "no feature stores"
    width = max(len(r.key) for r in reports)
    lines = []
    for r in reports:
        lines.append(f"{r.key:<{width}}  {r.state:<10}  {r.path}")
        lines += [f"{'':<{width}}    - {p}" for p in r.problems]
        lines += [f"{'':<{width}}    · {n}" for n in r.notes]
    failing = sum(r.failing for r in reports)
    lines.append(f"{len(reports)} entries, {failing} not ok" if failing else f"{len(reports)} entries, none failing")
    return "\n".join(lines)
