"""Cache integrity: check every feature store against its bytes, params and manifest.

``shoulders verify`` (or ``python -m pipeline verify``) calls :func:`verify_features`
on ``features/``. Each store ``<key>.zarr`` is

- **corrupt** if a chunk is missing (it would silently read as zeros), does not
  decode (zstd checksums catch flipped bytes), holds NaN or Inf, or if shapes,
  dtypes, labels or the per-split statistics written at completion disagree
  with what the store records;
- **incomplete** if it is not marked complete;
- **stale** if its provenance differs from the feature set of the same key in
  ``params.yaml`` (backbone, weights and their hash, cut, input size, alpha,
  dtype, seed of random weights) or was made from another manifest;
- **orphan** if ``params.yaml`` has no feature set of that key;
- otherwise **ok**.

Partial stores left in ``features/.incomplete/`` by interrupted extractions,
temporary folders of an interrupted swap and feature sets without a store are
listed too (``partial``, ``leftover``, ``missing``) but are not failures: the
next ``dvc repro`` resumes or replaces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import zarr
from tqdm.auto import tqdm

from pipeline.config import SPLITS, ExtractParams, FeatureSetParams, Params
from pipeline.manifest import read_manifest
from pipeline.provenance import file_sha256
from pipeline.store.integrity import missing_chunks, statistics_problems
from pipeline.store.layout import INCOMPLETE_DIR, STORE_FORMAT

FAILING_STATES = ("corrupt", "incomplete", "stale", "orphan")


@dataclass(frozen=True)
class StoreReport:
    """The verdict on one store (or leftover) under the features folder."""

    key: str
    path: str
    state: str                    # ok | corrupt | incomplete | stale | orphan | partial | leftover | missing
    problems: tuple[str, ...] = ()

    @property
    def failing(self) -> bool:
        return self.state in FAILING_STATES


# --------------------------------------------------------------------------- the whole folder


def verify_features(features_dir: Path | str, params: Params, manifest: Optional[Path | str] = None, *,
                    progress: bool = False) -> list[StoreReport]:
    """Verify every store under ``features_dir`` and list leftovers.

    Parameters
    ----------
    features_dir : path-like
        The folder of ``<key>.zarr`` stores.
    params : Params
        The current parameters (feature sets and extract settings).
    manifest : path-like, optional
        The current manifest; stores made from another are stale. If absent
        (or the file does not exist) this comparison is skipped and said so.
    progress : bool

    Returns
    -------
    list of StoreReport
        Stores sorted by key, then leftovers and missing stores.
    """
    root = Path(features_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no features folder at {root}")
    manifest_sha = manifest_rows = None
    if manifest is not None and Path(manifest).is_file():
        manifest_sha = file_sha256(Path(manifest))
        records = read_manifest(manifest)
        manifest_rows = {s: sum(r.split == s for r in records) for s in SPLITS}
    stores = sorted(root.glob("*.zarr"))
    reports = []
    for path in tqdm(stores, desc="verify stores", unit="store", disable=not progress):
        spec = params.features.get(path.stem)
        expected = expected_provenance(spec, params.extract) if spec is not None else None
        report = verify_store(path, expected=expected, manifest_sha256=manifest_sha, manifest_rows=manifest_rows)
        if manifest is not None and manifest_sha is None:
            report = _with(report, problems=(*report.problems, f"manifest {manifest} not found: not compared"))
        reports.append(report)
    reports += _leftovers(root)
    present = {p.stem for p in stores}
    reports += [StoreReport(key, str(root / f"{key}.zarr"), "missing", ("not extracted yet",))
                for key in sorted(params.features) if key not in present]
    return reports


def _leftovers(root: Path) -> list[StoreReport]:
    out = []
    for path in sorted((root / INCOMPLETE_DIR).glob("*.zarr")):
        key = path.stem.rsplit("-", 1)[0]
        out.append(StoreReport(key, str(path), "partial", (_partial_progress(path),)))
    for path in sorted((root / INCOMPLETE_DIR).glob("*.new")):
        out.append(StoreReport(path.name.split(".zarr.")[0].rsplit("-", 1)[0], str(path), "leftover",
                               ("a partial store whose creation was interrupted; safe to delete",)))
    for path in sorted(root.glob("*.zarr.*.old")):
        key = path.name.split(".zarr.")[0]
        hint = ("safe to delete" if (root / f"{key}.zarr").exists()
                else f"{key}.zarr is missing: this is its previous complete version, rename it back")
        out.append(StoreReport(key, str(path), "leftover", (f"kept during an interrupted swap; {hint}",)))
    return out


def _partial_progress(path: Path) -> str:
    try:
        group = zarr.open_group(path, mode="r")
        done = sum(int(np.asarray(group[s]["done"][...]).sum()) for s in SPLITS)
        total = sum(int(group[s]["done"].shape[0]) for s in SPLITS)
    except Exception as error:  # noqa: BLE001 - any unreadable partial is reported, never fatal
        return f"unreadable partial store ({type(error).__name__}: {error}); safe to delete"
    return f"{done} of {total} chunks written; the next extraction with the same provenance resumes it"


def _with(report: StoreReport, **changes: Any) -> StoreReport:
    return StoreReport(**{**report.__dict__, **changes})


# --------------------------------------------------------------------------- one store


def expected_provenance(spec: FeatureSetParams, extract: ExtractParams) -> dict[str, Any]:
    """The provenance entries a store of ``spec`` must have, as far as known without building it.

    ``cut: null`` (the last layer) is checked as ``cut_index == n_layers - 1``
    by :func:`verify_store`; ImageNet weights resolved by Keras have no
    recorded hash, so only a weights *file* is re-hashed.
    """
    from pipeline.backbones import input_size

    expected: dict[str, Any] = {
        "backbone": spec.backbone, "weights": spec.weights, "input_size": input_size(spec),
        "alpha": spec.alpha, "dtype": spec.dtype or extract.dtype,
        "seed": extract.seed if spec.weights == "none" else None,
    }
    if spec.cut is not None:
        expected["cut"] = spec.cut
    if spec.weights not in ("imagenet", "none"):
        weights = Path(spec.weights)
        expected["weights_sha256"] = file_sha256(weights) if weights.is_file() else f"<{weights} is missing>"
    return expected


def verify_store(path: Path | str, *, expected: Optional[dict] = None, manifest_sha256: Optional[str] = None,
                 manifest_rows: Optional[dict[str, int]] = None) -> StoreReport:
    """Check one store's bytes, its recorded shapes and statistics, and its provenance.

    Parameters
    ----------
    path : path-like
        A ``<key>.zarr`` folder.
    expected : dict, optional
        From :func:`expected_provenance`; None marks the store an orphan.
    manifest_sha256 : str, optional
        Hash of the current manifest.
    manifest_rows : dict, optional
        Rows per split of the current manifest.

    Returns
    -------
    StoreReport
        The worst state found (corrupt, incomplete, stale, orphan, ok) and every problem.
    """
    path = Path(path)
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as error:  # noqa: BLE001 - an unreadable store is a verdict, not a crash
        return StoreReport(path.stem, str(path), "corrupt", (f"not a readable Zarr group ({error})",))
    if attrs.get("shoulders_store") != STORE_FORMAT:
        return StoreReport(path.stem, str(path), "corrupt",
                           (f"not a shoulders store of format {STORE_FORMAT} "
                            f"(shoulders_store={attrs.get('shoulders_store')!r})",))
    try:
        corrupt = integrity_problems(group, path)
    except Exception as error:  # noqa: BLE001 - e.g. an array's own zarr.json is damaged
        corrupt = [f"unreadable array metadata ({type(error).__name__}: {error})"]
    incomplete = [] if attrs.get("complete") is True else ["not marked complete (extraction did not finish)"]
    provenance = attrs.get("provenance") or {}
    stale = [] if expected is None else provenance_problems(provenance, expected)
    if manifest_sha256 is not None and provenance.get("manifest_sha256") != manifest_sha256:
        stale.append("made from another manifest (data/manifest.csv changed since)")
    elif manifest_rows is not None and not corrupt:  # rows are readable only in a sound store
        rows = {s: int(group[s]["X"].shape[0]) for s in SPLITS}
        if rows != manifest_rows:
            corrupt.append(f"rows per split {rows} differ from its manifest's {manifest_rows}")
    orphan = ["no feature set of this key in params.yaml"] if expected is None else []
    for state, problems in (("corrupt", corrupt), ("incomplete", incomplete), ("stale", stale), ("orphan", orphan)):
        if problems:
            return StoreReport(path.stem, str(path), state, tuple(corrupt + incomplete + stale + orphan))
    return StoreReport(path.stem, str(path), "ok")


def provenance_problems(provenance: dict, expected: dict) -> list[str]:
    """One line per provenance entry that differs from ``expected``."""
    problems = [f"{name}: store has {provenance.get(name)!r}, params say {value!r}"
                for name, value in expected.items() if provenance.get(name) != value]
    if "cut" not in expected:
        index, count = provenance.get("cut_index"), provenance.get("n_layers")
        if index is None or count is None or index != count - 1:
            problems.append(f"cut: params say the last layer (cut: null), store is cut at "
                            f"{provenance.get('cut')!r} (layer {index} of {count})")
    return problems


def integrity_problems(group: zarr.Group, path: Path) -> list[str]:
    """Everything wrong with a store's arrays: missing or undecodable chunks, bad values, bad shapes."""
    attrs = group.attrs
    feature_shape = tuple(attrs.get("feature_shape", ()))
    dtype, chunk_rows = attrs.get("dtype"), attrs.get("chunk_rows")
    n_classes = len(attrs.get("classes", ()))
    stats = attrs.get("stats") or {}
    problems: list[str] = []
    for split in SPLITS:
        names = ("X", "y", "ids", "done")
        if split not in group or any(name not in group[split] for name in names):
            problems.append(f"{split}: missing (needs arrays {', '.join(names)})")
            continue
        node = group[split]
        X = node["X"]
        n = X.shape[0]
        where = f"{split}/X"
        if tuple(X.shape[1:]) != feature_shape:
            problems.append(f"{where}: rows of shape {tuple(X.shape[1:])}, recorded feature_shape {feature_shape}")
        if str(X.dtype) != dtype:
            problems.append(f"{where}: dtype {X.dtype}, recorded {dtype}")
        if X.chunks[0] != chunk_rows:
            problems.append(f"{where}: chunks of {X.chunks[0]} rows, recorded chunk_rows {chunk_rows}")
        for name in ("y", "ids"):
            if node[name].shape != (n,):
                problems.append(f"{split}/{name}: shape {node[name].shape}, expected ({n},) like X")
        for name in names:
            problems += [f"{split}/{name}: {m}" for m in missing_chunks(node[name], path / split / name)]
        if problems:
            continue  # reading would return fill values where chunks are missing
        problems += statistics_problems(X, where, stats.get(split))
        problems += _check_small_arrays(node, split, n_classes, n, chunk_rows)
    return problems


def _check_small_arrays(node: zarr.Group, split: str, n_classes: int, n: int, chunk_rows: int) -> list[str]:
    problems = []
    try:
        y = np.asarray(node["y"][...])
        ids = np.asarray(node["ids"][...])
        done = np.asarray(node["done"][...])
    except Exception as error:  # noqa: BLE001 - zarr/numcodecs raise several types for bad bytes
        return [f"{split}: y, ids or done is corrupt: {type(error).__name__}: {error}"]
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        problems.append(f"{split}/y: labels outside 0..{n_classes - 1}")
    if len(set(ids.tolist())) != len(ids):
        problems.append(f"{split}/ids: repeated ids")
    if len(done) != math.ceil(n / chunk_rows) or not done.all():
        problems.append(f"{split}/done: {int(done.sum())} of {len(done)} chunks ticked as written")
    return problems


def render(reports: Sequence[StoreReport]) -> str:
    """A plain-text table of the reports, problems indented under each."""
    if not reports:
        return "no feature stores"
    width = max(len(r.key) for r in reports)
    lines = []
    for r in reports:
        lines.append(f"{r.key:<{width}}  {r.state:<10}  {r.path}")
        lines += [f"{'':<{width}}    - {p}" for p in r.problems]
    failing = sum(r.failing for r in reports)
    lines.append(f"{len(reports)} entries, {failing} not ok" if failing else f"{len(reports)} entries, none failing")
    return "\n".join(lines)
