"""Stage extract: run one backbone cut over every image once, into a Zarr store.

Reads  the manifest (``--manifest``) and ``params.yaml`` sections
       ``features.<key>`` and ``extract``.
Writes the feature store ``--out`` (``features/<key>.zarr``): the unpooled map
       of the cut layer for every image, one group per split, with provenance.

Images stream through a tf.data pipeline (parallel decode and resize,
prefetch) into a compiled inference step; each finished chunk of rows goes to a
writer thread, so Zarr writes overlap inference and memory stays flat however
many images there are. A killed run resumes from its last completed chunk (see
:mod:`pipeline.store`). On a GPU, XLA and mixed precision are on by default
(``extract.jit_compile`` / ``extract.mixed_precision``); on a CPU both are off,
since XLA slows depthwise convolutions there and float16 compute is emulated.

Usage: ``python -m pipeline.extract --feature-set KEY --out features/KEY.zarr``
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from pipeline.config import SPLITS, ExtractParams, FeatureSetParams, feature_set, load_params
from pipeline.data import Record, class_names, read_manifest
from pipeline.stage import run_stage
from pipeline.store import FeatureWriter, SplitRows, rows_per_chunk

log = logging.getLogger(__name__)

# At most this many chunks wait for the writer: bounds memory, keeps inference busy.
_WRITES_IN_FLIGHT = 2
# Share of non-zero float32 values allowed to round to zero when stored as float16;
# past it the stored features no longer say what the network computed.
_MAX_UNDERFLOW = 0.01
_BATCH_CPU, _BATCH_GPU = 32, 128


@dataclass(frozen=True)
class Runtime:
    """How inference runs on this machine, resolved from ``extract`` params."""

    device: str            # "GPU" or "CPU"
    batch_size: int
    jit_compile: bool
    mixed_precision: bool


def resolve_runtime(settings: ExtractParams) -> Runtime:
    """Resolve the ``auto`` settings for the devices TensorFlow sees."""
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    pick = lambda value, on_gpu: on_gpu if value == "auto" else value  # noqa: E731
    return Runtime(device="GPU" if gpu else "CPU",
                   batch_size=pick(settings.batch_size, _BATCH_GPU if gpu else _BATCH_CPU),
                   jit_compile=pick(settings.jit_compile, gpu),
                   mixed_precision=pick(settings.mixed_precision, gpu))


@dataclass(frozen=True)
class ExtractResult:
    """What one extraction did, for logs and benchmarks."""

    path: Path
    rows: int                  # rows in the store
    computed: int              # rows computed by this run (fewer when resumed)
    build_seconds: float       # building the truncated model
    extract_seconds: float     # decode → inference → write, overlapped
    finalize_seconds: float    # reading every chunk back, marking complete
    runtime: Runtime


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
    """sha256 of a file's bytes (the manifest's, for provenance)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compile_inference(model, preprocess, *, dtype: str, jit_compile: bool):
    """The compiled step: raw 0–255 batch → stored features, plus precision-loss counts.

    Returns
    -------
    callable
        ``infer(batch) -> (features, lost, nonzero, overflow, largest)`` where
        ``features`` has the store's dtype and the counts feed :class:`PrecisionGuard`.
    """
    import tensorflow as tf

    out_dtype = tf.as_dtype(dtype)

    @tf.function(reduce_retracing=True, jit_compile=jit_compile)
    def infer(batch):
        full = tf.cast(model(preprocess(batch), training=False), tf.float32)
        stored = tf.cast(full, out_dtype)
        nonzero = tf.not_equal(full, 0)
        lost = tf.logical_and(nonzero, tf.equal(stored, 0))
        overflow = tf.logical_and(tf.math.is_finite(full), tf.logical_not(tf.math.is_finite(stored)))
        return (stored, tf.math.count_nonzero(lost), tf.math.count_nonzero(nonzero),
                tf.math.count_nonzero(overflow), tf.reduce_max(tf.abs(full)))

    return infer


def extract_feature_set(spec: FeatureSetParams, settings: ExtractParams, records: Sequence[Record], *,
                        out: Path, manifest_sha256: str, progress: bool = True) -> ExtractResult:
    """Compute and store one feature set, resuming a partial store of the same provenance.

    Parameters
    ----------
    spec : FeatureSetParams
        Backbone, weights, cut, size (and an optional dtype override).
    settings : ExtractParams
        Batch size, dtype, chunk size, seed, XLA and mixed precision.
    records : sequence of Record
        The manifest rows; their order within a split is the store's row order.
    out : Path
        The final store path.
    manifest_sha256 : str
        Recorded in the provenance, so features of another manifest are never mixed in.

    Returns
    -------
    ExtractResult
    """
    from tqdm.auto import tqdm

    from pipeline.backbones import build_cut_model

    started = time.perf_counter()
    runtime = resolve_runtime(settings)
    cut = build_cut_model(spec, seed=settings.seed, mixed_precision=runtime.mixed_precision)
    feature_shape = tuple(int(d) for d in cut.model.output_shape[1:])
    dtype = spec.dtype or settings.dtype
    chunk_rows = rows_per_chunk(feature_shape, np.dtype(dtype).itemsize, chunk_mb=settings.chunk_mb,
                                batch_size=runtime.batch_size)
    by_split = {s: [r for r in records if r.split == s] for s in SPLITS}
    provenance = {
        **cut.provenance,
        "dtype": dtype,
        "compute": "mixed_float16" if runtime.mixed_precision else "float32",
        "jit_compile": runtime.jit_compile,
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
    infer = compile_inference(cut.model, cut.preprocess, dtype=dtype, jit_compile=runtime.jit_compile)
    built = time.perf_counter()
    log.info("extract %s: %s (%s) cut at %r (layer %d of %d), input %dx%d → %s %s; %s, batch %d, %d rows per "
             "chunk", out.stem, spec.backbone, spec.weights, cut.cut, cut.cut_index, cut.n_layers,
             cut.provenance["input_size"], cut.provenance["input_size"], feature_shape, dtype, runtime.device,
             runtime.batch_size, chunk_rows)
    log.info("rows per split: %s", {s: len(rs) for s, rs in by_split.items()})

    plan = {s: writer.pending_chunks(s) for s in SPLITS}
    todo = sum(_rows(writer, s, c) for s in SPLITS for c in plan[s])
    total = sum(len(rs) for rs in by_split.values())
    if total - todo:
        log.info("resuming: %d rows already stored, %d to go", total - todo, todo)
    guard = PrecisionGuard(out.stem, dtype)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer") as pool, \
            tqdm(total=todo, desc=f"extract {out.stem}", unit="img", disable=not progress) as bar:
        in_flight: deque[Future] = deque()
        for split in SPLITS:
            if not plan[split]:
                continue
            outputs = _infer_all(_pending_paths(writer, split, plan[split], by_split[split]),
                                 infer, guard, size=cut.provenance["input_size"], batch_size=runtime.batch_size)
            for chunk, block in _regroup(outputs, [(c, _rows(writer, split, c)) for c in plan[split]]):
                in_flight.append(pool.submit(writer.write_chunk, split, chunk, block))
                bar.update(len(block))
                while len(in_flight) > _WRITES_IN_FLIGHT:
                    in_flight.popleft().result()
        while in_flight:
            in_flight.popleft().result()
    extracted = time.perf_counter()
    if todo:
        log.info("extracted %d images in %.1f s (%.1f images/s)", todo, extracted - built,
                 todo / (extracted - built))
    path = writer.finalize()
    return ExtractResult(path=path, rows=total, computed=todo, build_seconds=built - started,
                         extract_seconds=extracted - built, finalize_seconds=time.perf_counter() - extracted,
                         runtime=runtime)


def _rows(writer: FeatureWriter, split: str, chunk: int) -> int:
    rows = writer.chunk_slice(split, chunk)
    return rows.stop - rows.start


def _pending_paths(writer: FeatureWriter, split: str, chunks: Sequence[int],
                   records: Sequence[Record]) -> list[str]:
    return [records[i].path for c in chunks for i in range(*writer.chunk_slice(split, c).indices(len(records)))]


def _infer_all(paths: Sequence[str], infer, guard: PrecisionGuard, *, size: int,
               batch_size: int) -> Iterator[np.ndarray]:
    from pipeline.inputs import image_batches

    for batch in image_batches(paths, size=size, batch_size=batch_size):
        stored, lost, nonzero, overflow, largest = infer(batch)
        guard.check(int(lost), int(nonzero), int(overflow), float(largest))
        yield stored.numpy()


def _regroup(outputs: Iterable[np.ndarray], chunks: Sequence[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """Cut a stream of output batches into the pending chunks ``(index, rows)``, in order."""
    pending = iter(chunks)
    chunk, need = next(pending)
    buffer: list[np.ndarray] = []
    held = 0
    for out in outputs:
        buffer.append(out)
        held += len(out)
        while held >= need:
            block = np.concatenate(buffer)
            yield chunk, block[:need]
            rest = block[need:]
            buffer, held = ([rest], len(rest)) if len(rest) else ([], 0)
            following = next(pending, None)
            if following is None:
                return
            chunk, need = following


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
