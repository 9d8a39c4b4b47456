"""Extraction throughput and memory per runtime: the extract stage against its ceilings, the tutorial way and the stage before.

For each backbone, on the same JPEG files (photo-sized, 500×375, made from the
photographs scikit-image ships: ``benchmarks/photos.py``), each method runs in
a fresh process:

- ``naive``: ``keras.utils.load_img`` every image into one numpy array,
  ``model.predict(x, batch_size=32)``, ``np.save`` (the tutorial way);
- ``before``: the extract stage of ``--before`` (a git revision; default the
  last commit before the runtimes: TensorFlow with its tf.data input pipeline),
  run from ``git archive`` of that revision with its default settings;
- ``stage:<runtime>[:<precision>]``: today's extract stage
  (:func:`pipeline.extraction.feature_sets.extract_feature_set`, given its
  planned identity as the stage does: threaded decode/resize, the runtime's
  compiled step, overlapped Zarr writes, the read-back verification) with
  ``extract.runtime``/``precision`` set, after one untimed warm-up run, so
  that OpenVINO reads its converted network from the network cache
  (:mod:`pipeline.extraction.network_cache`) as every stage but a machine's
  first does; ``stage-cold:openvino`` is that first one (an empty network
  cache: it builds and converts the network);
- ``compute:<runtime>[:<precision>]``: that runtime's compiled step on one
  in-memory batch, repeated, at the batch size the stage uses, streamed as the
  stage streams batches (OpenVINO: one in flight per CPU stream) (the ceiling:
  no decoding, no writing; a warm-up round excluded); ``compute:openvino-keras``
  is the OpenVINO runtime with its model built under Keras' OpenVINO backend
  (the graph used where TensorFlow is not installed) instead of converted by
  OpenVINO's TensorFlow frontend;
- ``decode:threads`` and ``decode:tf.data``: the input pipeline alone — today's
  (:func:`pipeline.extraction.inputs.image_batches`) and the tf.data pipeline
  it replaced (``tf.numpy_function`` around the same PIL decode,
  ``tf.image.resize``, ``map(num_parallel_calls=cores)``, batch, prefetch);
- a method ending in ``+pil`` (``decode:threads+pil``, ``stage:openvino+pil``):
  the same, with every file decoded by PIL instead of libjpeg-turbo through
  simplejpeg (the decoder before it; the same pixels, see ``pipeline/images.py``).

Columns: img/s (median of ``--repeats`` interleaved runs; model construction
excluded, the first batch included except for compute; "with build": the
whole extraction, model construction included), GFLOP/s achieved
(FLOPs per image from TensorFlow's profiler on the frozen graph × img/s)
against the CPU's float32 peak, and peak RSS (``ru_maxrss``). The float32 peak
is measured, not looked up: the best of five 4096×4096×4096 float32 matrix
products through numpy's BLAS on every core (2·n³ FLOPs each) — what dense
float32 arithmetic reaches on this machine. ``--scale K`` also runs the
default stage on K× the images, to show its memory stays flat.

Lite0 (and Lite1/2) run with their real ImageNet weights and float16 storage;
VGG16 has no offline weights, so it runs with random ones (timing does not
depend on the values) and float32 storage; its bfloat16 rows report the
features' relative L2 difference from the float32 stage.

Usage::

    python benchmarks/extract.py --backbones efficientnet_lite0,vgg16 --images 1000,48 --repeats 3 --scale 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(Path(__file__).resolve().parent))  # benchmarks/photos.py; `pipeline` stays the PYTHONPATH one
from photos import make_photos, write_manifest  # noqa: E402

BEFORE = "1d282c8"  # the last commit with the TensorFlow-only stage and its tf.data input pipeline
PRETRAINED = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def spec_of(backbone: str):
    from pipeline.config import FeatureSetParams

    # Cuts named (the stage's check resolves `cut: null` the same way), so that the stage rows plan their identity.
    if backbone in PRETRAINED:
        return FeatureSetParams(backbone=backbone, weights="imagenet", cut="top_activation")
    # random activations underflow float16
    return FeatureSetParams(backbone=backbone, weights="none", dtype="float32", cut=LAST_LAYER.get(backbone))


# The OpenVINO runtime with its model built under Keras' OpenVINO backend (what runs without TensorFlow).
KERAS_OPENVINO = "openvino-keras"
# A method with every file decoded by PIL (the decoder before simplejpeg), for the same run's comparison.
PIL = "+pil"
# The stage on a machine that has not converted the network before (an empty network cache).
COLD = "stage-cold:"
LAST_LAYER = {"vgg16": "block5_pool", "vgg19": "block5_pool"}


def methods_for(backbone: str, runtimes: list[str]) -> list[str]:
    methods = ["naive", "before", "decode:tf.data", "decode:threads", f"decode:threads{PIL}"]
    for runtime in runtimes:
        methods += [f"stage:{runtime}", f"compute:{runtime}"]
        if runtime == "openvino":
            methods.append(f"{COLD}{runtime}")  # the first stage on a machine: converts the network
            methods.append(f"stage:{runtime}{PIL}")
    if "openvino" in runtimes:
        methods.append(f"compute:{KERAS_OPENVINO}")  # the graph Keras' own OpenVINO backend makes
    if "openvino" in runtimes and not backbone.startswith("efficientnet"):
        methods += ["stage:openvino:bfloat16", "compute:openvino:bfloat16"]  # opt-in, dense convolutions
    return methods


# --------------------------------------------------------------------------- one method, in its own process


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(method: str):
    from pipeline.config import ExtractParams

    parts = method.split(":")
    runtime = "openvino" if parts[1] == KERAS_OPENVINO else parts[1]
    return ExtractParams(runtime=runtime, precision=parts[2] if len(parts) > 2 else "float32")


def run_method(method: str, backbone: str, manifest: Path, work: Path) -> dict:
    from pipeline.manifest import images_by_hash, read_manifest

    if method.endswith(PIL):
        import pipeline.images

        pipeline.images.simplejpeg = None  # every file through PIL, as before simplejpeg
        method = method[: -len(PIL)]

    records = read_manifest(manifest)
    n = len(records)
    images = images_by_hash(records)
    baseline = _rss_mb()
    if method.startswith("decode:"):
        return {"images": n, "baseline_mb": baseline, **decode_only(method, [r.path for r in records])}
    if method in ("before", "naive"):
        from pipeline.config import ExtractParams
        from pipeline.extraction.feature_sets import extract_feature_set

        if method == "naive":
            return naive(backbone, records, work)
        result = extract_feature_set(
            spec_of(backbone),
            ExtractParams(),
            sorted(images),
            {h: r.path for h, r in images.items()},
            out=work / "features.zarr",
            progress=False,
        )
        return {
            "images": n,
            "seconds": result.extract_seconds + result.finalize_seconds,
            "rss_mb": _rss_mb(),
            "total_seconds": result.seconds,
            "baseline_mb": baseline,
            "batch_size": result.runtime.batch_size,
        }
    settings = _settings(method)
    if method.startswith(("stage:", COLD)):
        from pipeline.extraction.feature_sets import extract_feature_set
        from pipeline.extraction.plan import planned_identity

        spec = spec_of(backbone)
        result = extract_feature_set(
            spec,
            settings,
            sorted(images),
            {h: r.path for h, r in images.items()},
            out=work / "features.zarr",
            progress=False,
            expected=planned_identity(spec, settings, spec.cut),
        )
        return {
            "images": n,
            "seconds": result.extract_seconds + result.finalize_seconds,
            "rss_mb": _rss_mb(),
            "total_seconds": result.seconds,
            "baseline_mb": baseline,
            "batch_size": result.runtime.batch_size,
            "store": str(work / "features.zarr"),
        }
    from pipeline.extraction.plan import plan_extraction
    from pipeline.extraction.runtimes import stream

    built = plan_extraction(spec_of(backbone), settings)
    batch_size, size = built.plan.runtime.batch_size, built.plan.provenance.input_size
    step = built.step()
    batch = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    for _ in stream(step, [batch] * int(getattr(step, "requests", 1))):
        pass  # compiled, warm
    steps = -(-n // batch_size)
    started = time.perf_counter()
    for _ in stream(step, itertools.repeat(batch, steps)):  # as the stage runs it: several in flight where it can
        pass
    seconds = time.perf_counter() - started
    return {
        "images": steps * batch_size,
        "seconds": seconds,
        "rss_mb": _rss_mb(),
        "baseline_mb": baseline,
        "batch_size": batch_size,
    }


def naive(backbone: str, records, work: Path) -> dict:
    import keras

    from pipeline.backbones import build_cut_model

    cut = build_cut_model(spec_of(backbone), seed=0)
    size = cut.provenance["input_size"]
    baseline = _rss_mb()
    started = time.perf_counter()
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(r.path, target_size=(size, size))) for r in records])
    features = cut.model.predict(cut.preprocess(x), batch_size=32, verbose=0)
    np.save(work / "features.npy", features)
    return {
        "images": len(records),
        "seconds": time.perf_counter() - started,
        "rss_mb": _rss_mb(),
        "baseline_mb": baseline,
        "batch_size": 32,
    }


def decode_only(method: str, paths: list[str], size: int = 224, batch_size: int = 32) -> dict:
    """The input pipeline alone: today's threads or the tf.data pipeline it replaced."""
    from pipeline.extraction.inputs import image_batches, parallel_calls

    if method == "decode:threads":
        started = time.perf_counter()
        for _ in image_batches(paths, size=size, batch_size=batch_size):
            pass
        return {"seconds": time.perf_counter() - started, "rss_mb": _rss_mb(), "batch_size": batch_size}
    import tensorflow as tf

    from pipeline.images import decode_image

    def load(path):
        pixels = tf.numpy_function(lambda p: decode_image(p.decode("utf-8")), [path], tf.uint8, stateful=False)
        pixels.set_shape((None, None, 3))
        return tf.clip_by_value(tf.image.resize(pixels, (size, size), method="bilinear"), 0.0, 255.0)

    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = (
        tf.data.Dataset.from_tensor_slices(tf.constant(paths))
        .map(load, num_parallel_calls=parallel_calls(), deterministic=True)
        .batch(batch_size)
        .prefetch(2)
        .with_options(options)
    )
    started = time.perf_counter()
    for _ in dataset:
        pass
    return {"seconds": time.perf_counter() - started, "rss_mb": _rss_mb(), "batch_size": batch_size}


def flops_per_image(backbone: str) -> float:
    """Floating-point operations of one image through the truncated model (TF profiler, frozen graph)."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from pipeline.backbones import build_cut_model
    from pipeline.config import FeatureSetParams

    cut = build_cut_model(FeatureSetParams(backbone=backbone, weights="none"), seed=0)
    size = cut.provenance["input_size"]
    function = tf.function(lambda x: cut.model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, size, size, 3), tf.float32)
    )
    frozen = convert_variables_to_constants_v2(function)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
    )
    return float(info.total_float_ops)


def float32_peak(n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` n×n×n float32 matrix products through numpy's BLAS (every core)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def relative_difference(a_store: str, b_store: str) -> float:
    """‖a − b‖ / ‖b‖ over two stores' features, rows matched by image hash."""
    import zarr

    def rows(path):
        group = zarr.open_group(path, mode="r")
        hashes = [str(h) for h in group["sha256"][...]]
        X = np.asarray(group["X"][: len(hashes)], np.float32)
        return {h: X[i] for i, h in enumerate(hashes) if h}

    a, b = rows(a_store), rows(b_store)
    common = sorted(set(a) & set(b))
    x, y = np.stack([a[h] for h in common]), np.stack([b[h] for h in common])
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


# --------------------------------------------------------------------------- driver


def cold_cache(folder: Path) -> Path:
    """A fresh shoulders cache folder holding the machine's converted weights and batch sizes, no converted network."""
    from pipeline.cache_dir import cache_dir

    folder.mkdir(parents=True)
    for path in cache_dir().glob("*"):
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    return folder


def _spawn(args: list[str], pythonpath: str | None = None, cache: Path | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if cache is not None:
        env["SHOULDERS_CACHE_DIR"] = str(cache)
    env.pop("KERAS_BACKEND", None)  # each runtime chooses its own backend
    if any(KERAS_OPENVINO in arg for arg in args):
        env["KERAS_BACKEND"] = "openvino"
    env["PYTHONPATH"] = pythonpath or str(ROOT)
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def checkout(revision: str, folder: Path) -> Path:
    """The package as it was at ``revision`` (``git archive``), for the ``before`` method."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "pipeline"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_lite0,vgg16")
    parser.add_argument("--images", default="1000,48", help="images per backbone (comma list, same order)")
    parser.add_argument("--runtimes", default="tensorflow,openvino", help="also: jax (slow on CPUs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=0, help="also run the default stage on K× the images")
    parser.add_argument("--before", default=BEFORE, help="the revision whose stage is the `before` row")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument(
        "--worker", nargs=4, metavar=("METHOD", "BACKBONE", "MANIFEST", "WORKDIR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--flops", metavar="BACKBONE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, backbone, manifest, work = args.worker
        print(json.dumps(run_method(method, backbone, Path(manifest), Path(work))))
        return
    if args.flops:
        print(json.dumps({"flops": flops_per_image(args.flops)}))
        return

    backbones = args.backbones.split(",")
    counts = [int(c) for c in args.images.split(",")]
    runtimes = args.runtimes.split(",")
    peak = float32_peak()
    print(f"float32 peak (numpy BLAS, 4096³, {os.cpu_count()} cores): {peak:.1f} GFLOP/s", file=sys.stderr)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="shoulders-bench-") as tmp:
        tmp = Path(tmp)
        before = str(checkout(args.before, tmp / "before"))
        largest = max(counts) * max(1, args.scale)
        photos = make_photos(tmp / "photos", largest)
        for backbone, n in zip(backbones, counts):
            flops = _spawn(["--flops", backbone])["flops"]
            plans = [(n, m) for m in methods_for(backbone, runtimes)]
            if args.scale > 1:
                plans.append((n * args.scale, "stage:openvino" if "openvino" in runtimes else f"stage:{runtimes[0]}"))
            results: dict[tuple[int, str], list[dict]] = {plan: [] for plan in plans}
            for method in {m for _, m in plans if m.startswith("stage:")}:
                # Untimed: measures the batch size if needed and converts the network once (the network cache).
                warm = tmp / f"warm-{method.replace(':', '-')}"
                write_manifest(photos[:8], tmp / "warm.csv")
                _spawn(["--worker", method, backbone, str(tmp / "warm.csv"), str(warm)])
            for repeat in range(args.repeats):
                for count, method in plans:
                    if count != n and repeat > 0:
                        continue  # the scaled run is for memory: once is enough
                    manifest = tmp / f"manifest_{count}.csv"
                    if not manifest.exists():
                        write_manifest(photos[:count], manifest)
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    result = _spawn(
                        ["--worker", method, backbone, str(manifest), str(work)],
                        pythonpath=before if method == "before" else None,
                        cache=cold_cache(work / "cache") if method.startswith(COLD) else None,
                    )
                    results[(count, method)].append(result)
                    print(f"  {backbone} {method} n={count} run {repeat + 1}: {result}", file=sys.stderr)
            raw[backbone] = {f"{m}@{c}": r for (c, m), r in results.items()}
            median = {
                plan: {
                    k: statistics.median(r.get(k) or 0.0 for r in rs)
                    for k in ("images", "seconds", "rss_mb", "total_seconds")
                }
                for plan, rs in results.items()
            }
            speed = {plan: m["images"] / m["seconds"] for plan, m in median.items()}
            fastest_compute = max(
                v
                for (c, m), v in speed.items()  # float32: the precision of the defaults
                if m.startswith("compute:") and m.count(":") == 1 and c == n
            )
            differences = {}
            for precision_method in [m for c, m in plans if m.endswith(":bfloat16") and m.startswith("stage:")]:
                reference = precision_method.rsplit(":", 1)[0]
                differences[precision_method] = relative_difference(
                    results[(n, precision_method)][0]["store"], results[(n, reference)][0]["store"]
                )
            for plan in plans:
                count, method = plan
                computes = not method.startswith("decode:")
                rows.append(
                    {
                        "backbone": backbone,
                        "method": method,
                        "images": count,
                        "images_per_s": speed[plan],
                        "gflop_per_s": speed[plan] * flops / 1e9 if computes else None,
                        "of_peak": speed[plan] * flops / 1e9 / peak if computes else None,
                        "peak_rss_mb": median[plan]["rss_mb"],
                        "gflop_per_image": flops / 1e9,
                        "vs_before": speed[plan] / speed[(n, "before")],
                        "vs_fastest_compute": speed[plan] / fastest_compute,
                        "relative_l2": differences.get(method),
                        "batch_size": results[plan][0].get("batch_size"),
                        "images_per_s_with_build": count / median[plan]["total_seconds"]
                        if median[plan]["total_seconds"]
                        else None,
                    }
                )
    print()
    print(f"float32 peak: {peak:.1f} GFLOP/s (numpy BLAS sgemm 4096³, best of 5, {os.cpu_count()} cores)")
    print(
        f"{'backbone':<18} {'method':<26} {'images':>6} {'batch':>5} {'img/s':>8} {'GFLOP/s':>8} {'of peak':>7} "
        f"{'peak RSS MB':>11} {'×before':>7} {'×fastest compute':>16} {'rel. L2':>8} {'img/s with build':>16}"
    )
    for r in rows:
        gflops = f"{r['gflop_per_s']:>8.1f}" if r["gflop_per_s"] is not None else f"{'':>8}"
        of_peak = f"{r['of_peak']:>7.0%}" if r["of_peak"] is not None else f"{'':>7}"
        l2 = f"{r['relative_l2']:>8.2e}" if r["relative_l2"] is not None else f"{'':>8}"
        whole = f"{r['images_per_s_with_build']:>16.1f}" if r["images_per_s_with_build"] else f"{'':>16}"
        print(
            f"{r['backbone']:<18} {r['method']:<26} {r['images']:>6} {str(r['batch_size'] or ''):>5} "
            f"{r['images_per_s']:>8.1f} {gflops} {of_peak} {r['peak_rss_mb']:>11.0f} {r['vs_before']:>7.2f} "
            f"{r['vs_fastest_compute']:>16.2f} {l2} {whole}"
        )
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "rows": rows, "raw": raw}, indent=2))


if __name__ == "__main__":
    main()
