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
import itertools
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from pipeline.augmentation import batch_seed
from pipeline.config import SPLITS, ExtractParams, FeatureSetParams, feature_set, load_params
from pipeline.data import Record, class_names, read_manifest
from pipeline.stage import run_stage
from pipeline.locations import Location
from pipeline.store import FeatureWriter, SplitRows, rows_per_chunk, store_name

log = logging.getLogger(__name__)

# At most this many chunks wait for the writer: bounds memory, keeps inference busy.
_WRITES_IN_FLIGHT = 2
# Share of non-zero float32 values allowed to round to zero when stored as float16;
# past it the stored features no longer say what the network computed.
_MAX_UNDERFLOW = 0.01
# Measured on the 2-core CPUs here (benchmarks/extract.py, BENCHMARKS.md): small batches keep a
# depthwise network's activations in cache (EfficientNet-Lite0: 55 img/s at 8 against 42 at 32),
# and heavy networks (VGG16) run the same at any size; a GPU wants large batches.
_BATCH_CPU, _BATCH_GPU = 8, 128


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

    path: Location
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


def compile_inference(model, preprocess, *, dtype: str, jit_compile: bool, augment_layers=None):
    """The compiled step: raw 0–255 batch → stored features, plus precision-loss counts.

    Parameters
    ----------
    model, preprocess
        The truncated backbone and its input preprocessing.
    dtype : str
        The store's dtype.
    jit_compile : bool
    augment_layers : list of keras layers, optional
        Applied to the batch first (see :mod:`pipeline.augmentation`); the step
        then takes the batch's seed as a second argument.

    Returns
    -------
    callable
        ``infer(batch[, seed]) -> (features, lost, nonzero, overflow, largest)``
        where ``features`` has the store's dtype and the counts feed :class:`PrecisionGuard`.
    """
    import tensorflow as tf

    from pipeline.augmentation import augment

    out_dtype = tf.as_dtype(dtype)

    def step(batch):
        full = tf.cast(model(preprocess(batch), training=False), tf.float32)
        stored = tf.cast(full, out_dtype)
        nonzero = tf.not_equal(full, 0)
        lost = tf.logical_and(nonzero, tf.equal(stored, 0))
        overflow = tf.logical_and(tf.math.is_finite(full), tf.logical_not(tf.math.is_finite(stored)))
        return (stored, tf.math.count_nonzero(lost), tf.math.count_nonzero(nonzero),
                tf.math.count_nonzero(overflow), tf.reduce_max(tf.abs(full)))

    # A fixed signature with any batch size: traced once, even for the smaller last batch of each split.
    images = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    if augment_layers is None:
        return tf.function(step, input_signature=[images], jit_compile=jit_compile)
    return tf.function(lambda batch, seed: step(augment(augment_layers, batch, seed)),
                       input_signature=[images, tf.TensorSpec((), tf.int64)])


@dataclass(frozen=True)
class Extraction:
    """A backbone cut ready to run: everything decided before the first image is read."""

    runtime: Runtime
    cut: Any                   # pipeline.backbones.CutModel
    dtype: str
    feature_shape: tuple[int, ...]
    chunk_rows: int
    provenance: dict
    # The compiled clean step, traced once per process however many shards run (not sent anywhere).
    steps: dict = field(default_factory=dict, compare=False, repr=False)

    def step(self, augment_layers=None):
        """The compiled inference step (:func:`compile_inference`); the clean one is kept and reused."""
        if augment_layers is None and "clean" in self.steps:
            return self.steps["clean"]
        step = compile_inference(self.cut.model, self.cut.preprocess, dtype=self.dtype,
                                 jit_compile=self.runtime.jit_compile, augment_layers=augment_layers)
        if augment_layers is None:
            self.steps["clean"] = step
        return step


def plan_extraction(spec: FeatureSetParams, settings: ExtractParams, *, manifest_sha256: str) -> Extraction:
    """Build the truncated model once and describe what it will produce (provenance, chunking)."""
    from pipeline.backbones import build_cut_model

    runtime = resolve_runtime(settings)
    cut = build_cut_model(spec, seed=settings.seed, mixed_precision=runtime.mixed_precision)
    feature_shape = tuple(int(d) for d in cut.model.output_shape[1:])
    dtype = spec.dtype or settings.dtype
    chunk_rows = rows_per_chunk(feature_shape, np.dtype(dtype).itemsize, chunk_mb=settings.chunk_mb,
                                batch_size=runtime.batch_size)
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
    return Extraction(runtime=runtime, cut=cut, dtype=dtype, feature_shape=feature_shape, chunk_rows=chunk_rows,
                      provenance=provenance)


@dataclass(frozen=True)
class Job:
    """One chunk to compute: rows ``rows`` of ``split`` (and, for augmented passes, one view)."""

    split: str
    chunk: int
    rows: range
    view: Optional[int] = None


def run_jobs(extraction: Extraction, jobs: Sequence[Job], records: Mapping[str, Sequence[Record]],
             write: Callable[[Job, np.ndarray], None], *, name: str, progress: bool = True,
             augment: Optional[tuple[list, int]] = None) -> int:
    """Stream the images of ``jobs`` through the model and hand each finished chunk to ``write``.

    Writes run on a writer thread while inference goes on; at most
    ``_WRITES_IN_FLIGHT`` chunks wait, so memory stays flat.

    Parameters
    ----------
    extraction : Extraction
    jobs : sequence of Job
        In order; consecutive jobs of the same split and view are streamed together.
    records : mapping of split to its manifest rows
    write : callable
        ``write(job, block)`` stores one chunk.
    name : str
        For messages and the progress bar.
    augment : (layers, seed), optional
        Augment every batch first, seeded by (seed, view, split, first row).

    Returns
    -------
    int
        Rows computed.
    """
    from tqdm.auto import tqdm

    cut = extraction.cut
    infer = extraction.step(augment[0] if augment else None)
    guard = PrecisionGuard(name, extraction.dtype)
    todo = sum(len(job.rows) for job in jobs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer") as pool, \
            tqdm(total=todo, desc=name, unit="img", disable=not progress) as bar:
        in_flight: deque[Future] = deque()
        for (split, view), group in itertools.groupby(jobs, key=lambda job: (job.split, job.view)):
            group = list(group)
            rows = [i for job in group for i in job.rows]
            seeds = None
            if augment:
                seeds = [batch_seed(augment[1], view, split, rows[k])
                         for k in range(0, len(rows), extraction.runtime.batch_size)]
            batches = _infer_batches(infer, guard, [records[split][i].path for i in rows], seeds,
                                     size=cut.provenance["input_size"], batch_size=extraction.runtime.batch_size)
            for job, block in _regroup(_ticking(batches, bar), group):
                in_flight.append(pool.submit(write, job, block))
                while len(in_flight) > _WRITES_IN_FLIGHT:
                    in_flight.popleft().result()
        while in_flight:
            in_flight.popleft().result()
    return todo


def _ticking(batches: Iterable[np.ndarray], bar) -> Iterator[np.ndarray]:
    """Pass batches through, advancing the progress bar per batch (a chunk can take a while)."""
    for batch in batches:
        bar.update(len(batch))
        yield batch


def _infer_batches(infer, guard: PrecisionGuard, paths: Sequence[str], seeds: Optional[Sequence[int]], *,
                   size: int, batch_size: int) -> Iterator[np.ndarray]:
    """Decode, (augment,) infer and check each batch of ``paths``; yield stored features."""
    import tensorflow as tf

    from pipeline.inputs import image_batches

    for k, batch in enumerate(image_batches(paths, size=size, batch_size=batch_size)):
        result = infer(batch) if seeds is None else infer(batch, tf.constant(seeds[k], tf.int64))
        stored, lost, nonzero, overflow, largest = result
        guard.check(int(lost), int(nonzero), int(overflow), float(largest))
        yield stored.numpy()


def extract_feature_set(spec: FeatureSetParams, settings: ExtractParams, records: Sequence[Record], *,
                        out: Location, manifest_sha256: str, progress: bool = True) -> ExtractResult:
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
    from pipeline.distributed import extract_distributed, scheduler_address

    address = scheduler_address(settings)
    if address:
        return extract_distributed(spec, settings, records, out=out, manifest_sha256=manifest_sha256,
                                   address=address, progress=progress)
    started = time.perf_counter()
    extraction = plan_extraction(spec, settings, manifest_sha256=manifest_sha256)
    by_split = split_records(records)
    writer = FeatureWriter(out, extraction.provenance, split_rows(by_split), class_names(records),
                           extraction.feature_shape, extraction.dtype, extraction.chunk_rows)
    built = time.perf_counter()
    describe(extraction, store_name(out), spec, by_split)
    jobs = [Job(split, chunk, range(*writer.chunk_slice(split, chunk).indices(len(by_split[split]))))
            for split in SPLITS for chunk in writer.pending_chunks(split)]
    total = sum(len(rs) for rs in by_split.values())
    todo = sum(len(job.rows) for job in jobs)
    if total - todo:
        log.info("resuming: %d rows already stored, %d to go", total - todo, todo)
    run_jobs(extraction, jobs, by_split, lambda job, block: writer.write_chunk(job.split, job.chunk, block),
             name=f"extract {store_name(out)}", progress=progress)
    extracted = time.perf_counter()
    if todo:
        log.info("extracted %d images in %.1f s (%.1f images/s)", todo, extracted - built,
                 todo / (extracted - built))
    path = writer.finalize()
    return ExtractResult(path=path, rows=total, computed=todo, build_seconds=built - started,
                         extract_seconds=extracted - built, finalize_seconds=time.perf_counter() - extracted,
                         runtime=extraction.runtime)


def split_records(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Manifest rows per split, in manifest order (the store's row order)."""
    return {s: [r for r in records if r.split == s] for s in SPLITS}


def split_rows(by_split: Mapping[str, Sequence[Record]]) -> dict[str, SplitRows]:
    """Labels and ids per split, as the store records them."""
    return {s: SplitRows(np.array([r.label for r in rs], np.int32), np.array([r.id for r in rs], dtype=str))
            for s, rs in by_split.items()}


def describe(extraction: Extraction, name: str, spec: FeatureSetParams,
             by_split: Mapping[str, Sequence[Record]]) -> None:
    """Log the input and output shapes of a backbone pass, once."""
    p = extraction.provenance
    size = p["input_size"]
    log.info("%s: %s (%s) cut at %r (layer %d of %d), input %dx%d → %s %s; %s, batch %d, %d rows per chunk",
             name, spec.backbone, spec.weights, p["cut"], p["cut_index"], p["n_layers"], size, size,
             extraction.feature_shape, extraction.dtype, extraction.runtime.device,
             extraction.runtime.batch_size, extraction.chunk_rows)
    log.info("rows per split: %s", {s: len(rs) for s, rs in by_split.items()})


def _regroup(outputs: Iterable[np.ndarray], jobs: Sequence[Job]) -> Iterator[tuple[Job, np.ndarray]]:
    """Cut a stream of output batches into the rows of ``jobs``, in order."""
    pending = iter(jobs)
    job = next(pending)
    buffer: list[np.ndarray] = []
    held = 0
    for out in outputs:
        buffer.append(out)
        held += len(out)
        while held >= len(job.rows):
            block = np.concatenate(buffer)
            yield job, block[:len(job.rows)]
            rest = block[len(job.rows):]
            buffer, held = ([rest], len(rest)) if len(rest) else ([], 0)
            job = next(pending, None)
            if job is None:
                # Run the batch stream to its end (its decode threads stop there), and check it is.
                for extra in outputs:
                    raise ValueError(f"{len(extra)} rows beyond the last job")
                return


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
    extract_feature_set(spec, params.extract, records, out=args.out,
                        manifest_sha256=file_digest(args.manifest), progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
