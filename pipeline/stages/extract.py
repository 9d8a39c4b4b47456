"""Stage extract: run one backbone cut over every image once, into a Zarr store.

Reads  the manifest (``--manifest``) and ``params.yaml`` sections
       ``features.<key>`` and ``extract``.
Writes the feature store ``--out`` (``features/<key>.zarr``): the unpooled map of
       the cut layer for every image, one group per split, with provenance.

The work is :func:`pipeline.extraction.feature_sets.extract_feature_set` (in
this process) or :func:`pipeline.extraction.distributed.extract_distributed`
(when ``extract.scheduler`` or ``$DASK_SCHEDULER_ADDRESS`` names a Dask
scheduler). A killed run resumes from its last completed chunk.

Usage: ``python -m pipeline.stages.extract --feature-set KEY --out features/KEY.zarr``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pipeline.config import dask_address, feature_set, load_params
from pipeline.extraction.distributed import extract_distributed
from pipeline.extraction.feature_sets import extract_feature_set
from pipeline.manifest import read_manifest
from pipeline.provenance import file_sha256
from pipeline.stage import run_stage


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature-set", required=True, help="key of the feature set in params.yaml `features`")
    parser.add_argument("--out", required=True, help="the store to write: features/KEY.zarr, or an fsspec URL")
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    spec = feature_set(params, args.feature_set)
    records = read_manifest(args.manifest)
    options = {"out": args.out, "manifest_sha256": file_sha256(args.manifest), "progress": not args.no_progress}
    address = dask_address(params.extract.scheduler)
    if address:
        extract_distributed(spec, params.extract, records, address=address, **options)
    else:
        extract_feature_set(spec, params.extract, records, **options)


if __name__ == "__main__":
    run_stage(main)
