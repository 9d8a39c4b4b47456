"""Stage extract: run one backbone cut over every image that has no features yet, into its Zarr store.

Reads  ``--hashes`` (``data/extraction_hashes.txt``, written by the catalog
       stage: its DVC input, which changes only when images come that some
       store lacks, so re-splitting, relabelling or removing images never
       starts it), the manifest (``--manifest``: which of those images are the
       dataset's, and where their bytes are; each file is checked against its
       hash as it is read), the check stage's ``--check`` file, and
       ``params.yaml`` sections ``features.<key>`` and ``extract``.
Writes the feature store ``--out`` (``features/<key>.zarr``, kept between runs:
       DVC ``persist``): the unpooled map of the cut layer of every image, keyed
       by its content hash; and ``--report`` (``reports/extract/<key>.json``, DVC
       metrics): images, reused, computed (repaired: of them, rows of damaged chunks), seconds,
       images_per_second.

Images with a row already are never computed again; rows of images no longer
in the dataset stay until ``shoulders gc``. Every chunk of the store is first
read back against its digest: the rows of chunks that fail (a file missing,
corrupt, changed or swapped) are computed again, and only they. When the
store is sound and already has every row, the stage stops before building the
backbone (or importing TensorFlow). Whatever it wrote, its last act is to check
every chunk of the store against its digest: it never ends successfully (and
so DVC never records the store) unless the store verifies.
The work is :func:`pipeline.extraction.feature_sets.extract_feature_set` (in
this process) or :func:`pipeline.extraction.distributed.extract_distributed`
(when ``extract.scheduler`` or ``$DASK_SCHEDULER_ADDRESS`` names a Dask
scheduler). A killed run resumes from its last written chunk. Before it starts, it logs how long it
should take on this machine (:mod:`pipeline.extraction.estimate`).

Usage: ``python -m pipeline.stages.extract --feature-set KEY --out features/KEY.zarr``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import dask_address, feature_set, load_params
from pipeline.extraction.estimate import extraction_estimate, record_extraction
from pipeline.extraction.feature_sets import extract_feature_set, nothing_to_do
from pipeline.extraction.plan import planned_identity
from pipeline.extraction.wanted import already_extracted, damage_to_repair, dataset_images, image_paths, resolved_cut
from pipeline.manifest import read_content_hashes, read_manifest
from pipeline.store.contents import rows_missing, stored_rows
from pipeline.store.layout import store_name
from pipeline.store.repair import prove_store

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature-set", required=True, help="key of the feature set in params.yaml `features`")
    parser.add_argument("--out", required=True, help="the store: features/KEY.zarr, or an fsspec URL")
    parser.add_argument(
        "--hashes",
        default=Path("data/content_hashes.txt"),
        type=Path,
        help="images to cover (dvc.yaml passes the catalog's list; default: the dataset's)",
    )
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--check", default=None, type=Path, help="the check stage's reports/checks/KEY.json")
    parser.add_argument("--report", default=None, type=Path, help="accounting JSON, e.g. reports/extract/KEY.json")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    params = load_params(args.params)
    spec = feature_set(params, args.feature_set)
    records = read_manifest(args.manifest)
    wanted = dataset_images(read_content_hashes(args.hashes), records, store=args.out)
    cut = resolved_cut(spec, args.check)
    identity = planned_identity(spec, params.extract, cut) if cut is not None else None
    damage = damage_to_repair(args.out, identity)
    if not damage and already_extracted(args.out, identity, wanted):
        # Every chunk was just read back against its digest: the store verifies as it is.
        result = nothing_to_do(args.out, len(set(wanted)), stored_rows(args.out), started)
    else:
        paths = image_paths(records, wanted, where=str(args.manifest), damage=damage)
        options = {
            "out": args.out,
            "progress": not args.no_progress,
            "expected": identity,
            "repair": None if damage is None else damage.chunks,
        }
        address = dask_address(params.extract.scheduler)
        if address:
            from pipeline.extraction.distributed import extract_distributed

            result = extract_distributed(spec, params.extract, wanted, paths, address=address, **options)
        else:
            # This machine's speed, said before and kept after (a cluster's is not this machine's).
            missing = rows_missing(args.out, identity, wanted) if identity is not None else None
            todo = (len(set(wanted)) if missing is None else missing) + (len(damage.hashes) if damage else 0)
            name = f"extract {store_name(args.out)}"
            log.info("%s", extraction_estimate(spec, params.extract, images=todo, name=name))
            result = extract_feature_set(spec, params.extract, wanted, paths, **options)
            record_extraction(spec, params.extract, images=result.computed, seconds=result.seconds)
        prove_store(result.path)
    log.info("%s", result.summary(f"extract {store_name(args.out)}"))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result.report(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
