"""Stage augment: K seeded augmented passes of the training images through one backbone cut.

Reads  the manifest (``--manifest``) and ``params.yaml`` sections
       ``features.<key>`` and ``extract`` (``extract.augment``: views, ops, seed, tta).
Writes the views store ``--out`` (``features/views/<key>.zarr``, kept between
       runs by DVC's ``persist``): for each training image K views through the
       Keras preprocessing layers of ``extract.augment.ops``, each stored as the
       unpooled map of the cut layer; with ``tta: true`` views of val and test too.

The clean features of every split stay in the extract stage's store, untouched.
Growing ``views`` computes only the new views; other ops, seed or backbone
rebuild the store (see :mod:`pipeline.views`). With ``views: 0`` the store is
an empty marker and no backbone runs.

Usage: ``python -m pipeline.augment --feature-set KEY --out features/views/KEY.zarr``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from pipeline.config import SPLITS, ExtractParams, FeatureSetParams, feature_set, load_params
from pipeline.data import Record, class_names, read_manifest
from pipeline.extract import Job, describe, file_digest, plan_extraction, run_jobs, split_records, split_rows
from pipeline.stage import run_stage
from pipeline.views import ViewWriter

log = logging.getLogger(__name__)


def augment_feature_set(spec: FeatureSetParams, settings: ExtractParams, records: Sequence[Record], *,
                        out: Path, manifest_sha256: str, progress: bool = True) -> int:
    """Compute the missing augmented views of one feature set.

    Parameters
    ----------
    spec : FeatureSetParams
    settings : ExtractParams
        Its ``augment`` section says how many views, which ops, which seed,
        and whether val/test get views (TTA).
    records : sequence of Record
    out : Path
        The views store.
    manifest_sha256 : str

    Returns
    -------
    int
        Rows computed by this run (0 when every wanted view was already there).
    """
    from pipeline.augmentation import build_layers

    augment = settings.augment
    extraction = plan_extraction(spec, settings, manifest_sha256=manifest_sha256)
    by_split = split_records(records)
    splits = ("train", "val", "test") if augment.tta else ("train",)
    provenance = {**extraction.provenance, "augment": {"ops": dict(augment.ops), "seed": augment.seed}}
    writer = ViewWriter(out, provenance, {s: r for s, r in split_rows(by_split).items() if s in splits},
                        class_names(records), extraction.feature_shape, extraction.dtype, extraction.chunk_rows,
                        augment.views)
    jobs = [Job(split, chunk, writer.chunk_rows_of(split, chunk), view)
            for view in range(augment.views) for split in SPLITS if split in splits
            for chunk in writer.pending(split, view)]
    if jobs:
        describe(extraction, f"augment {out.stem}", spec, {s: by_split[s] for s in splits})
        log.info("%d views × %s: %d image passes to compute (ops %s, seed %d)", augment.views, list(splits),
                 sum(len(j.rows) for j in jobs), dict(augment.ops), augment.seed)
    computed = run_jobs(extraction, jobs, by_split,
                        lambda job, block: writer.write_chunk(job.split, job.view, job.chunk, block),
                        name=f"augment {out.stem}", progress=progress,
                        augment=(build_layers(augment.ops), augment.seed))
    writer.finalize()
    return computed


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
                        manifest_sha256=file_digest(args.manifest), progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
