"""Stage augment: K seeded augmented passes of the training images through one backbone cut.

Reads  the manifest (``--manifest``) and ``params.yaml`` sections
       ``features.<key>`` and ``extract`` (``extract.augment``: views, ops, seed, tta).
Writes the views store ``--out`` (``features/views/<key>.zarr``, kept between
       runs by DVC's ``persist``): for each training image K views through the
       Keras preprocessing layers of ``extract.augment.ops``, each stored as the
       unpooled map of the cut layer; with ``tta: true`` views of val and test too.

The clean features of every split stay in the extract stage's store, untouched.
Growing ``views`` computes only the new views; other ops, seed or backbone
rebuild the store (see :mod:`pipeline.store.writer`). With ``views: 0`` the store is
an empty marker. The work is :func:`pipeline.extraction.feature_sets.augment_feature_set`.

Usage: ``python -m pipeline.stages.augment --feature-set KEY --out features/views/KEY.zarr``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pipeline.config import feature_set, load_params
from pipeline.extraction.feature_sets import augment_feature_set
from pipeline.manifest import read_manifest
from pipeline.provenance import file_sha256
from pipeline.stage import run_stage


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature-set", required=True, help="key of the feature set in params.yaml `features`")
    parser.add_argument("--out", required=True, type=Path, help="the views store, e.g. features/views/KEY.zarr")
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    records = read_manifest(args.manifest)
    augment_feature_set(feature_set(params, args.feature_set), params.extract, records, out=args.out,
                        manifest_sha256=file_sha256(args.manifest), progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
