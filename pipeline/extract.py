"""Stage extract: run one backbone cut over every image once, into a Zarr store.

Reads  the manifest (``--manifest``) and ``params.yaml`` sections
       ``features.<key>`` and ``extract``.
Writes the feature store ``--out`` (``features/<key>.zarr``): the unpooled map
       of the cut layer for every image, one group per split, with provenance.

Images stream through a tf.data pipeline into a compiled inference step; each
chunk of rows is handed to a writer thread so that Zarr writes overlap
inference. A killed run resumes from its last completed chunk (see
:mod:`pipeline.store`).

Usage: ``python -m pipeline.extract --feature-set KEY --out features/KEY.zarr``
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.stage import run_stage
from pipeline.config import SPLITS, ExtractParams, FeatureSetParams, feature_set, load_params
from pipeline.data import Record, class_names, read_manifest
from pipeline.store import FeatureWriter, SplitRows, rows_per_chunk

log = logging.getLogger(__name__)

# At most this many chunks wait for the writer: bounds memory, keeps inference busy.
_WRITES_IN_FLIGHT = 2
# Share of non-zero float32 values allowed to round to zero when stored as float16;
# past it the stored features no longer say what the network computed.
_MAX_UNDERFLOW = 0.01


class PrecisionGuard:
    """Refuse features that the storage dtype cannot represent (float16 under/overflow).

    Random-init deep networks can produce activations around 1e-15, which
    float16 stores as exact zeros: a head would then score chance level on a
    store that looks fine. Counting the losses per batch stops that at once.
    """

    def __init__(self, feature_set: str, dtype: str):
        self.feature_set, self.dtype = feature_set, dtype
        self.lost = self.nonzero = 0

    def check(self, lost: int, nonzero: int, overflow: int, largest: float) -> None:
        self.lost += lost
        self.nonzero += nonzero
        if overflow:
            raise ValueError(f"features of {self.feature_set} overflow {self.dtype} ({overflow} values beyond its "
                             f"range; largest |value| {largest:.3g}); set `dtype: float32` on the feature set "
                             "or extract.dtype: float32")
        if self.nonzero and self.lost > _MAX_UNDERFLOW * self.nonzero:
            raise ValueError(f"features of {self.feature_set} underflow {self.dtype}: {self.lost / self.nonzero:.0%} "
                             f"of the non-zero values round to 0 (largest |value| {largest:.3g}); set "
                             "`dtype: float32` on the feature set or extract.dtype: float32")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the features, for provenance."""
    names = ("shoulders", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pillow", "zarr")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def extract_feature_set(spec: FeatureSetParams, settings: ExtractParams, records: Sequence[Record], *,
                        out: Path, manifest_sha256: str, progress: bool = True) -> Path:
    """Compute and store one feature set.

    Parameters
    ----------
    spec : FeatureSetParams
        Backbone, weights, cut, size.
    settings : ExtractParams
        Batch size, dtype, chunk size, seed.
    records : sequence of Record
        The manifest rows; their order within a split is the store's row order.
    out : Path
        The final store path.
    manifest_sha256 : str
        Recorded in the provenance, so features of another manifest are never mixed in.

    Returns
    -------
    Path
        ``out``, complete.
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    from pipeline.backbones import build_cut_model
    from pipeline.inputs import image_batches

    cut = build_cut_model(spec, seed=settings.seed)
    feature_shape = tuple(int(d) for d in cut.model.output_shape[1:])
    size = cut.provenance["input_size"]
    dtype = spec.dtype or settings.dtype
    chunk_rows = rows_per_chunk(feature_shape, np.dtype(dtype).itemsize,
                                chunk_mb=settings.chunk_mb, batch_size=settings.batch_size)
    by_split = {s: [r for r in records if r.split == s] for s in SPLITS}
    provenance = {
        **cut.provenance,
        "dtype": dtype,
        "resize": "bilinear (tf.image.resize)",
        "decoder": "PIL via pipeline.images.decode_image",
        "chunk_rows": chunk_rows,
        "manifest_sha256": manifest_sha256,
        "versions": library_versions(),
    }
    writer = FeatureWriter(
        out, provenance,
        {s: SplitRows(np.array([r.label for r in rs], np.int32), np.array([r.id for r in rs], dtype=str))
         for s, rs in by_split.items()},
        class_names(records), feature_shape, dtype, chunk_rows)
    log.info("extract %s: %s cut at %r (layer %d of %d), input %dx%d → features %s, %d rows per chunk",
             out.name, spec.backbone, cut.cut, cut.cut_index, cut.n_layers, size, size, feature_shape, chunk_rows)
    log.info("rows per split: %s", {s: len(rs) for s, rs in by_split.items()})

    out_dtype = tf.as_dtype(dtype)
    guard = PrecisionGuard(out.stem, dtype)

    @tf.function(reduce_retracing=True)
    def infer(batch):
        full = cut.model(cut.preprocess(batch), training=False)
        stored = tf.cast(full, out_dtype)
        nonzero = tf.not_equal(full, 0)
        lost = tf.logical_and(nonzero, tf.equal(stored, 0))
        overflow = tf.logical_and(tf.math.is_finite(full), tf.logical_not(tf.math.is_finite(stored)))
        return (stored, tf.math.count_nonzero(lost), tf.math.count_nonzero(nonzero),
                tf.math.count_nonzero(overflow), tf.reduce_max(tf.abs(full)))

    plan = {s: writer.pending_chunks(s) for s in SPLITS}
    todo = sum(writer.chunk_slice(s, c).stop - writer.chunk_slice(s, c).start for s in SPLITS for c in plan[s])
    done_before = sum(len(rs) for rs in by_split.values()) - todo
    if done_before:
        log.info("resuming: %d rows already stored, %d to go", done_before, todo)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer") as pool, \
            tqdm(total=todo, desc=f"extract {out.stem}", unit="img", disable=not progress) as bar:
        in_flight: deque[Future] = deque()
        for split in SPLITS:
            chunks = plan[split]
            if not chunks:
                continue
            rows = [i for c in chunks for i in range(*writer.chunk_slice(split, c).indices(len(by_split[split])))]
            batches = image_batches([by_split[split][i].path for i in rows], size=size,
                                    batch_size=settings.batch_size)
            for chunk, block in _chunks_of(_run(batches, infer, guard), chunks, writer, split):
                in_flight.append(pool.submit(writer.write_chunk, split, chunk, block))
                bar.update(len(block))
                while len(in_flight) > _WRITES_IN_FLIGHT:
                    in_flight.popleft().result()
        while in_flight:
            in_flight.popleft().result()
    elapsed = time.perf_counter() - started
    if todo:
        log.info("extracted %d images in %.1f s (%.1f images/s)", todo, elapsed, todo / elapsed)
    return writer.finalize()


def _run(batches, infer, guard: PrecisionGuard):
    for batch in batches:
        stored, lost, nonzero, overflow, largest = infer(batch)
        guard.check(int(lost), int(nonzero), int(overflow), float(largest))
        yield stored.numpy()


def _chunks_of(outputs, chunks: Sequence[int], writer: FeatureWriter, split: str):
    """Regroup a stream of output batches into the pending chunks, in order."""
    buffer: list[np.ndarray] = []
    held = 0
    pending = iter(chunks)
    chunk = next(pending)
    need = writer.chunk_slice(split, chunk).stop - writer.chunk_slice(split, chunk).start
    for out in outputs:
        buffer.append(out)
        held += len(out)
        while held >= need:
            block = np.concatenate(buffer)
            yield chunk, block[:need]
            rest = block[need:]
            buffer, held = ([rest], len(rest)) if len(rest) else ([], 0)
            chunk = next(pending, None)
            if chunk is None:
                return
            need = writer.chunk_slice(split, chunk).stop - writer.chunk_slice(split, chunk).start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature-set", required=True, help="key of the feature set in params.yaml `features`")
    parser.add_argument("--out", required=True, type=Path, help="the store to write, e.g. features/KEY.zarr")
    parser.add_argument("--manifest", default=Path("data/manifest.csv"), type=Path)
    parser.add_argument("--params", default=Path("params.yaml"), type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    spec = feature_set(params, args.feature_set)
    records = read_manifest(args.manifest)
    extract_feature_set(spec, params.extract, records, out=args.out,
                        manifest_sha256=file_digest(args.manifest), progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
