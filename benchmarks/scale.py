"""Scale-out and out-of-core: Dask extraction with 1 vs 2 worker processes, and a head on 5× the memory.

Part 1 — extraction throughput on a ``LocalCluster`` of N single-threaded
worker processes (N = 1, 2), against the in-process extract stage, on the same
JPEGs (``benchmarks/extract.py``'s photos). On a 2-core machine the in-process
stage already uses both cores through TensorFlow's thread pools, so this shows
the cost of the distribution machinery more than a speed-up; on several
machines or GPUs each worker adds its own device.

Part 2 — out-of-core heads: a feature store of pooled vectors five times larger
than an address-space limit imposed with ``resource.setrlimit(RLIMIT_AS)`` on
the training process. The streaming logistic regression
(:class:`pipeline.heads.streaming.StreamingLinearHead`) trains within the limit; the
in-memory way (``np.asarray`` of the whole matrix) is refused by the same limit.

Usage::

    python benchmarks/scale.py --images 192 --rows 400000 --limit-mb 400
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- part 1: extraction


def extraction(images: int, workers: list[int], tmp: Path) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from photos import make_photos, write_manifest  # the same photos as benchmarks/extract.py

    from pipeline.config import ExtractParams, FeatureSetParams
    from pipeline.extraction.feature_sets import extract_feature_set
    from pipeline.manifest import images_by_hash, read_manifest

    photos = make_photos(tmp / "photos", images)
    manifest = tmp / "manifest.csv"
    write_manifest(photos, manifest)
    images = images_by_hash(read_manifest(manifest))
    records = (sorted(images), {h: r.path for h, r in images.items()})
    spec = FeatureSetParams(backbone="efficientnet_lite0", weights="imagenet", dtype="float32")
    rows = []
    started = time.perf_counter()
    result = extract_feature_set(spec, ExtractParams(), *records, out=tmp / "local.zarr", progress=False)
    rows.append(
        {
            "how": "in-process extract stage",
            "workers": 0,
            "images_per_s": images / result.extract_seconds,
            "wall_s": time.perf_counter() - started,
        }
    )
    from distributed import Client, LocalCluster

    for n in workers:
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
            ) as cluster,
            Client(cluster) as client,
        ):
            started = time.perf_counter()
            result = _distributed(spec, ExtractParams(shard_chunks=1), records, tmp / f"dask{n}.zarr", client)
            rows.append(
                {
                    "how": f"Dask LocalCluster, {n} worker process(es)",
                    "workers": n,
                    "images_per_s": images / result.extract_seconds,
                    "wall_s": time.perf_counter() - started,
                }
            )
    return rows


def _distributed(spec, settings, records, out, client):
    from pipeline.extraction.distributed import extract_distributed

    return extract_distributed(spec, settings, *records, out=out, address=client, progress=False)


# --------------------------------------------------------------------------- part 2: out of core


def make_store(path: Path, manifest: Path, rows: int, dims: int, classes: int, chunk_mb: float) -> None:
    """A store of pooled float16 vectors, written chunk by chunk (never whole in memory), and its manifest."""
    from pipeline.manifest import Record, write_manifest
    from pipeline.store.layout import rows_per_chunk
    from pipeline.store.writer import StoreWriter

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dims)).astype(np.float32)
    hashes = [f"{i:064x}" for i in range(rows)]  # rows are keyed by content hashes
    label_of = dict(zip(hashes, rng.integers(0, classes, size=rows).tolist()))
    writer = StoreWriter(
        path,
        {"benchmark": "out-of-core"},
        {},
        feature_shape=(dims,),
        dtype="float16",
        chunk_rows=rows_per_chunk((dims,), 2, chunk_mb=chunk_mb, batch_size=1),
    )
    writes, _ = writer.plan(hashes)
    in_rows = writer.row_hashes()
    for write in writes:
        labels = [label_of[in_rows[i]] for i in write.rows]
        block = centres[labels] + rng.normal(scale=12.0, size=(len(labels), dims)).astype(np.float32)
        writer.write(write, block)
    writer.finalize()
    write_manifest(
        [
            Record(
                id=str(i),
                path=str(i),
                label=label_of[h],
                class_name=f"c{label_of[h]}",
                split="train",
                sha256=h,
                width=1,
                height=1,
            )
            for i, h in enumerate(hashes)
        ],
        manifest,
    )


def train_under_limit(store: str, manifest: str, limit_mb: float, how: str) -> dict:
    """Run in a child process: impose the limit, then train (or load) and report peak RSS."""
    import dask

    from pipeline.heads.streaming import StreamingLinearHead
    from pipeline.store.reader import open_feature_set

    # Libraries, zarr's I/O thread and the store's metadata come before the limit: they are not the data.
    # Dask computes in this thread, since every new thread would reserve address space of its own.
    dask.config.set(scheduler="synchronous")
    features = open_feature_set(store, "train", manifest=manifest, pooling="none", as_dask=True)
    features.X[:1].compute()
    baseline = _vm_mb()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    limit = int((baseline + limit_mb) * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    started = time.perf_counter()
    try:
        if how == "in-memory":
            X = np.asarray(features.X.astype("float32"))  # the usual way: the whole matrix at once
            outcome = f"loaded {X.nbytes / 2**20:.0f} MB"
        else:
            head = StreamingLinearHead(epochs=1).fit(features.X, features.y)
            accuracy = float((head.predict(features.X[:5000]) == features.y[:5000]).mean())
            outcome = f"trained; accuracy on 5000 rows {accuracy:.3f}"
    except MemoryError:
        outcome = "MemoryError"
    return {
        "how": how,
        "limit_mb": limit_mb,
        "outcome": outcome,
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_rss_mb": baseline_rss,
    }


def _vm_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rows", type=int, default=400_000, help="rows of the out-of-core feature set")
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--limit-mb", type=float, default=400.0)
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("STORE", "MANIFEST", "LIMIT_MB", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        store, manifest, limit, how = args.child
        print(json.dumps(train_under_limit(store, manifest, float(limit), how)))
        return
    with tempfile.TemporaryDirectory(prefix="shoulders-scale-") as tmp:
        tmp = Path(tmp)
        if not args.skip_extraction:
            rows = extraction(args.images, [int(n) for n in args.workers.split(",")], tmp)
            print(
                f"\n{'extraction (EfficientNet-Lite0, 224×224, ' + str(args.images) + ' JPEGs)':<52} "
                f"{'img/s':>7} {'wall s':>7}"
            )
            for row in rows:
                print(f"{row['how']:<52} {row['images_per_s']:>7.2f} {row['wall_s']:>7.1f}")
        store = tmp / "big.zarr"
        # Chunks small against the limit: a block is held a few times over while it is scaled and shuffled.
        make_store(store, tmp / "big.csv", args.rows, args.dims, classes=10, chunk_mb=args.limit_mb / 50)
        size_mb = args.rows * args.dims * 4 / 2**20
        print(
            f"\nout-of-core: {args.rows} × {args.dims} features = {size_mb:.0f} MB as float32 "
            f"({size_mb / args.limit_mb:.1f}× the {args.limit_mb:.0f} MB limit)"
        )
        print(f"{'head':<12} {'outcome':<40} {'seconds':>8} {'RSS before MB':>13} {'peak RSS MB':>12}")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MALLOC_ARENA_MAX": "1"}
        for how in ("in-memory", "streaming"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(store), str(tmp / "big.csv"), str(args.limit_mb), how],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:
                print(f"{how:<12} crashed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{row['how']:<12} {row['outcome']:<40} {row['seconds']:>8.1f} {row['baseline_rss_mb']:>13.0f} "
                f"{row['peak_rss_mb']:>12.0f}"
            )


if __name__ == "__main__":
    main()
