"""What the per-chunk digests cost: reading a store with and without them, and finalising an extraction.

Every chunk of a store has a sha256 digest bound to its position
(:mod:`pipeline.store.integrity`). It is computed once when an extraction
finishes (each chunk written is read back, checked for NaN/Inf and digested)
and checked on every read. This script builds stores shaped like the default
feature sets' — EfficientNet-Lite0 at ``top_activation`` (7×7×1280) and at
``block6d_add`` (7×7×192), float16, 8 MB chunks — filled with post-activation-
like values (half zeros, the rest a normal's magnitude, so zstd has as much to
do as on real maps), and measures in the same run, per chunk (medians of
``--repeats``):

- **read**: decoding a chunk as the reader does it (zarr + zstd + checksums,
  :func:`~pipeline.store.integrity.load_chunk`) against decoding it and
  checking its digest (:func:`~pipeline.store.integrity.read_chunk`), and a
  whole ``open_feature_set`` of every row with avg pooling;
- **extraction**: the digest of a chunk against computing that chunk's rows
  with the backbone (Lite0 cut at the same layer, random weights — the same
  arithmetic as ImageNet weights — at the stage's CPU batch size, on this machine).

Usage: ``python benchmarks/digests.py [--rows 1024] [--repeats 5]`` from the project root.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.manifest import Record  # noqa: E402
from pipeline.store.integrity import chunk_digest, load_chunk, read_chunk  # noqa: E402
from pipeline.store.layout import n_chunks, rows_per_chunk, store_path  # noqa: E402
from pipeline.store.reader import open_feature_set  # noqa: E402
from pipeline.store.writer import StoreWriter  # noqa: E402

CUTS = {"top_activation": (7, 7, 1280), "block6d_add": (7, 7, 192)}
BATCH = 8  # the extract stage's CPU batch size


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def build_store(path: Path, shape: tuple[int, ...], rows: int, seed: int = 0) -> StoreWriter:
    """A finished float16 store of ``rows`` rows with 8 MB chunks, as an extraction leaves it."""
    chunk = rows_per_chunk(shape, 2, chunk_mb=8.0, batch_size=BATCH)
    rng = np.random.default_rng(seed)
    with StoreWriter(
        path, {"benchmark": str(shape)}, {}, feature_shape=shape, dtype="float16", chunk_rows=chunk
    ) as writer:
        writes, _ = writer.plan([sha(i) for i in range(rows)])
        for write in writes:
            block = np.abs(rng.normal(size=(len(write.rows), *shape))) * (rng.random((len(write.rows), *shape)) > 0.5)
            writer.write(write, block.astype(np.float32))
        writer.finalize()
    return writer


def median_seconds(function, repeats: int) -> float:
    return median_interleaved([function], repeats)[0]


def median_interleaved(functions, repeats: int) -> list[float]:
    """Median seconds of each function, run in turn in every repeat (so that drifts of the machine hit all alike)."""
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, series in zip(functions, times):
            started = time.perf_counter()
            function()
            series.append(time.perf_counter() - started)
    return [statistics.median(series) for series in times]


def backbone_seconds_per_image(cut: str, repeats: int) -> float:
    """Seconds per image of Lite0 cut at ``cut`` (random weights) on batches of BATCH, as extraction runs it."""
    import tensorflow as tf

    from pipeline.backbones import build_cut_model
    from pipeline.config import FeatureSetParams

    model = build_cut_model(FeatureSetParams(backbone="efficientnet_lite0", weights="none", cut=cut), seed=0).model
    step = tf.function(lambda x: model(x, training=False), jit_compile=False, reduce_retracing=True)
    batch = tf.random.uniform((BATCH, 224, 224, 3), -1, 1)
    step(batch)  # trace
    return median_seconds(lambda: step(batch).numpy(), repeats) / BATCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024, help="rows per store")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for cut, shape in CUTS.items():
            path = store_path(Path(tmp), cut)
            writer = build_store(path, shape, args.rows)
            group = writer.group
            X, total = group["X"], int(group.attrs["rows"])
            digests = group.attrs["chunk_digests"]
            chunks = n_chunks(total, X.chunks[0])
            decode, checked = median_interleaved(
                [
                    lambda: [load_chunk(path, X, c, total) for c in range(chunks)],
                    lambda: [read_chunk(path, X, c, total, digests[c]) for c in range(chunks)],
                ],
                args.repeats,
            )
            blocks = [load_chunk(path, X, c, total) for c in range(chunks)]
            digest = median_seconds(lambda: [chunk_digest(b, c) for c, b in enumerate(blocks)], args.repeats)
            records = [
                Record(
                    id=f"i{i}",
                    path="",
                    label=i % 2,
                    class_name="ab"[i % 2],
                    split="train",
                    sha256=sha(i),
                    width=1,
                    height=1,
                )
                for i in range(total)
            ]
            whole = median_seconds(
                lambda: open_feature_set(path, "train", manifest=records, pooling="avg"), args.repeats
            )
            per_image = backbone_seconds_per_image(cut, args.repeats)
            mb = X.chunks[0] * np.prod(shape) * 2 / 1e6
            results.append(
                {
                    "cut": cut,
                    "rows": total,
                    "chunks": chunks,
                    "rows_per_chunk": X.chunks[0],
                    "mb": mb,
                    "decode_ms": 1e3 * decode / chunks,
                    "checked_ms": 1e3 * checked / chunks,
                    "digest_ms": 1e3 * digest / chunks,
                    "open_s": whole,
                    "backbone_ms": 1e3 * per_image * X.chunks[0],
                }
            )
    print()
    print(
        "| store (Lite0 cut) | rows per 8 MB chunk | decode a chunk | decode + check its digest | read overhead "
        "| digest alone | open_feature_set, all rows (avg): digests' share | backbone for a chunk's rows "
        "| extraction overhead |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['cut']} | {r['rows_per_chunk']} ({r['mb']:.1f} MB) | {r['decode_ms']:.1f} ms "
            f"| {r['checked_ms']:.1f} ms | {100 * (r['checked_ms'] / r['decode_ms'] - 1):+.0f} % "
            f"| {r['digest_ms']:.1f} ms ({r['digest_ms'] / r['mb']:.2f} ms/MB) | {r['open_s']:.2f} s "
            f"({r['rows']} rows): {100 * r['digest_ms'] * r['chunks'] / 1e3 / r['open_s']:.0f} % "
            f"| {r['backbone_ms'] / 1e3:.2f} s "
            f"| {100 * r['digest_ms'] / r['backbone_ms']:.2f} % |"
        )


if __name__ == "__main__":
    main()
