"""GPU extraction: batch size, mixed precision and XLA for the backbone pass, on Keras 3 + JAX.

The extract stage's defaults on a GPU are batch 128, XLA (``jit_compile``) and
the ``mixed_float16`` policy (``pipeline.extraction.runtime.resolve_runtime``). This
benchmark checks those choices on a GPU machine that has JAX but no TensorFlow:
the same truncated backbones that the stage builds (``build_cut_model``, with
its ``mixed_precision`` switch), compiled by XLA through ``jax.jit`` around
Keras' ``stateless_call``, fed the stage's raw uint8 batches.

For each backbone, policy and batch size it reports:

- compute img/s: the input already on the GPU (the ceiling);
- with copy img/s: a uint8 host batch copied to the GPU each step, as the
  input pipeline hands it over;
- GFLOP/image from XLA's cost analysis of the lowered step, and the achieved TFLOP/s;
- for the mixed policies, how far the features move from float32 on real
  photographs (relative L2 error, worst element relative to the feature scale):
  mixed precision is used only where that is float16 rounding.

It also times the host side the GPU waits for: decoding and resizing 500×375
JPEGs with PIL in a process pool of every core, so the table shows whether the
GPU or the decoder bounds end-to-end extraction on that machine.

Usage (on the GPU machine, Keras 3 carried as a wheel)::

    KERAS_BACKEND=jax python benchmarks/gpu_extract.py --batches 32,64,128,256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.extract import make_photos  # noqa: E402

BACKBONES = {  # name → weights used (timing does not depend on weights; the precision check does)
    "efficientnet_lite0": "imagenet",
    "vgg16": "none",
    "resnet50": "none",
}
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def build_step(backbone: str, weights: str, policy: str):
    """The stage's truncated model under ``policy``, as one XLA-compiled function of a uint8 batch."""
    import jax
    import keras

    from pipeline.backbones import build_cut_model
    from pipeline.config import FeatureSetParams

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        cut = build_cut_model(FeatureSetParams(backbone=backbone, weights=weights, dtype="float32"), seed=0)
    finally:
        keras.config.set_dtype_policy(previous)
    model = cut.model
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def step(batch):
        x = cut.preprocess(batch.astype("float32"))
        out, _ = model.stateless_call(trainable, frozen, x, training=False)
        return out.astype("float32")

    return step, cut.provenance["input_size"]


def time_step(step, batch, *, copy: bool, seconds: float = 2.0, windows: int = 5) -> float:
    """Median images/s over ``windows`` timing windows of about ``seconds`` / ``windows`` each."""
    import jax

    device_batch = jax.device_put(batch)
    run = (lambda: step(jax.device_put(batch))) if copy else (lambda: step(device_batch))
    for _ in range(3):
        run().block_until_ready()
    started = time.perf_counter()
    run().block_until_ready()
    per_call = max(time.perf_counter() - started, 1e-4)
    calls = max(3, int(seconds / windows / per_call))
    rates = []
    for _ in range(windows):
        started = time.perf_counter()
        for _ in range(calls):
            out = run()
        out.block_until_ready()
        rates.append(calls * len(batch) / (time.perf_counter() - started))
    return statistics.median(rates)


def flops_per_image(step, size: int) -> float:
    """Floating-point operations of one image, from XLA's cost analysis of the lowered step.

    The lowered (pre-optimisation) HLO is analysed: after GPU compilation the
    convolutions become cuDNN custom calls that the analysis does not count.
    """
    import jax

    analysis = step.lower(jax.ShapeDtypeStruct((1, size, size, 3), np.uint8)).cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def load_photos(paths: list[Path], size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
                     for p in paths])


def _decode_one(path: str) -> int:
    from PIL import Image

    return int(np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR))[0, 0, 0])


def decode_rate(paths: list[Path], workers: int, repeats: int = 3) -> float:
    """Median images/s of PIL decode + resize to 224 over a pool of ``workers`` processes."""
    rates = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_one, map(str, paths[:workers * 4])))  # start the workers
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(_decode_one, map(str, paths), chunksize=16))
            rates.append(len(paths) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--photos", type=int, default=1024, help="JPEGs for the decode rate")
    args = parser.parse_args()

    import jax

    print(f"devices: {jax.devices()}  jax {jax.__version__}", file=sys.stderr)
    batches = [int(b) for b in args.batches.split(",")]
    policies = args.policies.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.photos)
        workers = os.cpu_count() or 1
        decode = decode_rate(paths, workers)
        print(f"decode+resize 500×375 JPEG → 224, PIL, {workers} processes: {decode:.0f} img/s", file=sys.stderr)
        for backbone in args.backbones.split(","):
            reference = None
            for policy in policies:
                step, size = build_step(backbone, BACKBONES[backbone], policy)
                photos = load_photos(paths[:64], size)
                features = np.asarray(step(photos))
                if reference is None:
                    reference = features
                error = np.linalg.norm(features - reference) / np.linalg.norm(reference)
                worst = np.abs(features - reference).max() / np.abs(reference).max()
                flops = flops_per_image(step, size)
                for batch_size in batches:
                    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
                    compute = time_step(step, batch, copy=False)
                    copied = time_step(step, batch, copy=True)
                    rows.append((backbone, policy, batch_size, compute, copied, flops / 1e9,
                                 compute * flops / 1e12, error, worst))
                    print("  ", rows[-1], file=sys.stderr, flush=True)
    print(f"\ndecode+resize (PIL, {workers} processes): {decode:.0f} img/s\n")
    print(f"{'backbone':<20} {'policy':<15} {'batch':>5} {'compute img/s':>13} {'with copy':>10} "
          f"{'GFLOP/img':>9} {'TFLOP/s':>8} {'rel L2 err':>10} {'worst/max':>9}")
    for r in rows:
        print(f"{r[0]:<20} {r[1]:<15} {r[2]:>5} {r[3]:>13.0f} {r[4]:>10.0f} {r[5]:>9.2f} {r[6]:>8.1f} "
              f"{r[7]:>10.1e} {r[8]:>9.1e}")


if __name__ == "__main__":
    main()
