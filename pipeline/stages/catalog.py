"""Stage catalog: the images extraction must cover — the dataset's, and those every store already has.

Reads  ``--hashes`` (``data/content_hashes.txt``, the dataset's distinct images),
       the row index of each feature set's store under ``--features`` (not a DVC
       dependency: that would be a cycle; see below) and ``params.yaml`` section
       ``features`` (which stores count).
Writes ``--out`` (``data/extraction_hashes.txt``): the dataset's images together
       with the images that every feature set's store already holds a row of,
       sorted, one a line. It is what the extract stages depend on in DVC.

So the list grows only when images come that some store lacks: removing images,
re-splitting or relabelling leave it as it was, and DVC does not even start an
extract stage; switching back to a dataset whose images were extracted before
changes nothing either. It is sound because every store holds a row of every
image of this list once its extract stage has run (a store loses rows only by
``shoulders gc``, which changes the store, which DVC then reruns extract for).
The output is ``persist`` in ``dvc.yaml``, which also keeps DVC's run-cache from
restoring an old list.

Usage: ``python -m pipeline.stages.catalog --hashes data/content_hashes.txt --out data/extraction_hashes.txt``
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli.stage_runner import run_stage
from pipeline.config import load_params
from pipeline.manifest import read_content_hashes, write_hash_list
from pipeline.store.layout import store_path
from pipeline.store.reader import rows_in_every_store

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", default=Path("data/content_hashes.txt"), type=Path)
    parser.add_argument("--features", default=Path("features"), type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    args = parser.parse_args(argv)
    dataset = set(read_content_hashes(args.hashes))
    stores = [store_path(args.features, key) for key in load_params(args.params).features]
    extracted = rows_in_every_store(stores)
    write_hash_list(sorted(dataset | extracted), args.out)
    log.info(
        "catalog: %d images in the dataset, %d extracted in every store, %d listed for extraction",
        len(dataset),
        len(extracted),
        len(dataset | extracted),
    )


if __name__ == "__main__":
    run_stage(main)
