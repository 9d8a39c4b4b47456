"""Stage augment: K seeded augmented views of the training images through one backbone cut.

Reads  the manifest (``--manifest``: which images are training images; with
       ``tta`` val and test ones too), the check stage's ``--check`` file, and
       ``params.yaml`` sections ``features.<key>`` and ``extract`` (``extract.augment``:
       views, ops, seed, tta).
Writes the views store ``--out`` (``features/views/<key>.zarr``, kept between
       runs by DVC's ``persist``): K views of each such image through the Keras
       preprocessing layers of ``extract.augment.ops``, each the unpooled map of
       the cut layer, keyed by the image's content hash; and ``--report``
       (``reports/extract/views-<key>.json``).

View ``v`` of an image depends only on (seed, v, its bytes), so growing
``views`` computes only the new views, new images get views without the old
ones being recomputed, and re-splitting computes views only for images that
became training images. Other ops, seed or backbone start a new store. With
``views: 0`` the store is an attributes-only marker and no backbone is built.
As in the extract stage, the views of chunks that fail their digests are
computed again (only they), and the stage ends by checking every chunk of the
store against its digest.
The work is :func:`pipeline.extraction.feature_sets.augment_feature_set`.

Usage: ``python -m pipeline.stages.augment --feature-set KEY --out features/views/KEY.zarr``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import feature_set, load_params
from pipeline.extraction.feature_sets import augment_feature_set, nothing_to_do
from pipeline.extraction.plan import augment_identity, planned_identity
from pipeline.extraction.wanted import already_extracted, damage_to_repair, image_paths, resolved_cut, view_images
from pipeline.manifest import read_manifest
from pipeline.store.contents import stored_rows
from pipeline.store.layout import store_name
from pipeline.store.repair import prove_store
from pipeline.store.writer import write_views_marker

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature-set", required=True, help="key of the feature set in params.yaml `features`")
    parser.add_argument("--out", required=True, help="the views store, e.g. features/views/KEY.zarr")
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--check", default=None, type=Path, help="the check stage's reports/checks/KEY.json")
    parser.add_argument("--report", default=None, type=Path, help="accounting JSON")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    params = load_params(args.params)
    spec, settings = feature_set(params, args.feature_set), params.extract
    cut = resolved_cut(spec, args.check)
    identity = planned_identity(spec, settings, cut, views=True) if cut is not None else None
    records = read_manifest(args.manifest)
    wanted = view_images(records, tta=settings.augment.tta)
    # A views store about to become a marker (views: 0) is replaced, not read.
    damage = damage_to_repair(args.out, identity) if settings.augment.views else None
    if settings.augment.views == 0:
        write_views_marker(args.out, identity or {"augment": augment_identity(settings), "cut": cut})
        result = nothing_to_do(args.out, 0, 0, started)
    elif not damage and already_extracted(args.out, identity, wanted, views=settings.augment.views):
        # Every chunk was just read back against its digest: the store verifies as it is.
        result = nothing_to_do(args.out, len(wanted), stored_rows(args.out), started)
    else:
        paths = image_paths(records, wanted, where=str(args.manifest), damage=damage)
        result = augment_feature_set(
            spec,
            settings,
            wanted,
            paths,
            out=args.out,
            progress=not args.no_progress,
            expected=identity,
            repair=None if damage is None else damage.chunks,
        )
        prove_store(result.path)
    log.info("%s", result.summary(f"augment {store_name(args.out)}"))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result.report(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stage(main)
