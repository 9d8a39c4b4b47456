"""Stage heads: train every head variant of the grid on every feature set.

Reads  the feature stores under ``--features`` and the manifest (``--manifest``:
       which images are train and val, and their labels; rows are found by
       content hash and pooled as each variant asks), and ``params.yaml``
       sections ``heads`` and ``features``.
Combinations (``heads.combine``) are trained after every feature set, each
into ``heads/<a>+<b>/`` (:mod:`pipeline.heads.combination`), when the stage runs
over every feature set. A feature set with random weights beside pretrained
ones is a control: it gets ``heads.control_kinds`` only
(:func:`pipeline.heads.training.control_feature_sets`).

Writes ``--out`` (``heads/<key>/``): one fitted scikit-learn pipeline per
       variant (``<variant>.joblib``: [standardize] → [pca] → head) and
       ``scores.json`` with each variant's validation scores, fit seconds, peak
       memory and fingerprint, the sweep's wall time, and the store's provenance.

Before fitting it logs how long that should take on this machine (:mod:`pipeline.heads.estimate`).
The test split is not read here. Only what changed is refitted (``--out`` is a
persistent DVC output; see :mod:`pipeline.heads.training`, which does the
work); ``dvc repro --force`` or ``--no-reuse`` refits everything.

Usage: ``python -m pipeline.stages.heads --features features --out heads`` (every feature set of
params.yaml, one after the other in one process), or ``--features features/KEY.zarr --out heads/KEY``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.heads.combination import combination_key
from pipeline.heads.training import control_feature_sets, parallel_backend, process_start, train_and_write
from pipeline.manifest import read_manifest
from pipeline.store.layout import store_path

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--features",
        required=True,
        type=Path,
        help="a feature store (features/KEY.zarr), or the folder of every feature set's store",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder for one store's heads (heads/KEY), or for every feature set's (heads)",
    )
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-reuse", action="store_true", help="refit every variant")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    with parallel_backend(params.heads):
        _run(args, params)


def _run(args, params) -> None:
    options = {"progress": not args.no_progress, "reuse": not args.no_reuse}
    records = read_manifest(args.manifest)
    started = process_start()
    if args.features.suffix == ".zarr":
        train_and_write([[args.features]], params.heads, [args.out], records, started=started, **options)
        return
    # Every feature set in one process and one pooled run: JAX (for dense heads) is imported, and its programs
    # compiled, once, and the scikit-learn jobs of every feature set share one pool of workers; the
    # fingerprints keep the heads of feature sets whose features and params did not change.
    controls = control_feature_sets(params.features)
    keys = list(params.features)
    stores = [[store_path(args.features, key)] for key in keys]
    # Combinations of the cached feature sets (heads.combine): their rows concatenated, no backbone pass.
    combined = [list(members) for members in params.heads.combine]
    stores += [[store_path(args.features, key) for key in members] for members in combined]
    names = keys + [combination_key(members) for members in combined]
    train_and_write(
        stores,
        params.heads,
        [args.out / name for name in names],
        records,
        started=started,
        controls=[name in controls for name in names],
        **options,
    )
    for stale in sorted(p for p in args.out.iterdir() if p.is_dir() and p.name not in set(names)):
        log.info("removing heads of %s: no longer a feature set", stale.name)
        shutil.rmtree(stale)


if __name__ == "__main__":
    run_stage(main)
