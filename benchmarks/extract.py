"""Extraction throughput and memory: shoulders' extract stage against the tutorial way.

For each backbone, on the same JPEG files (photo-sized, 500×375, made from the
photographs scikit-image ships), each method runs in a fresh process:

- naive: ``keras.utils.load_img`` every image into one numpy array,
  ``preprocess_input``, ``model.predict(x, batch_size=32)``, ``np.save``;
- compute-only: the same compiled model on an in-memory tensor, batch after
  batch, at the stage's batch size (the ceiling: no decoding, no writing);
- shoulders: ``pipeline.extraction.feature_sets.extract_feature_set`` (tf.data decode/resize,
  compiled inference, overlapped Zarr writes, then the read-back verification).

Model construction is excluded from every timing; the first (tracing) call is
included for naive and shoulders, excluded for compute-only. The ``after
start-up`` column puts shoulders on compute-only's footing: images after the
first batch over the time from the first batch's features to the verified,
complete store. Peak RSS is the process's ``ru_maxrss``. ``--scale K`` also runs
shoulders (and naive, if its arrays fit in a quarter of the RAM) on K× the images to
show which one's memory grows. Each figure is the median of ``--repeats`` runs,
interleaved.

Lite0 runs with its real ImageNet weights and the stage's default storage
(float16); VGG16 has no offline weights, so it runs with random ones (timing
does not depend on the values) and float32 storage, since random-weight
activations underflow float16.

Usage::

    python benchmarks/extract.py --backbones efficientnet_lite0,vgg16 --images 1000,48 --repeats 3 --scale 10
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("naive", "compute", "shoulders")


# --------------------------------------------------------------------------- the images


def make_photos(folder: Path, n: int, *, seed: int = 0, size=(500, 375)) -> list[Path]:
    """Write ``n`` distinct 500×375 JPEGs cut from scikit-image's bundled photographs."""
    from PIL import Image
    from skimage import data

    sources = []
    for name in ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field"):
        try:
            sources.append(np.asarray(getattr(data, name)()))
        except Exception:  # some scikit-image images need a download; use the bundled ones
            continue
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        photo = sources[i % len(sources)]
        h, w = photo.shape[:2]
        ch = int(min(h, w * 3 / 4) * rng.uniform(0.6, 1.0))
        cw = int(ch * 4 / 3)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(photo[top:top + ch, left:left + cw]).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"photo_{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def write_manifest(paths: list[Path], manifest: Path) -> None:
    import hashlib

    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("id", "path", "label", "class_name", "split", "sha256", "width", "height"))
        for i, path in enumerate(paths):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            writer.writerow((path.name, str(path), i % 2, f"c{i % 2}", "train", digest, 500, 375))


# --------------------------------------------------------------------------- one method, in its own process


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_method(method: str, backbone: str, manifest: Path, work: Path) -> dict:
    import keras
    import tensorflow as tf

    from pipeline.backbones import build_cut_model
    from pipeline.config import ExtractParams, FeatureSetParams
    from pipeline.extraction.feature_sets import extract_feature_set
    from pipeline.manifest import images_by_hash, read_manifest
    from pipeline.extraction.runtime import resolve_runtime
    from pipeline.extraction.runtimes.tensorflow_step import compile_inference

    pretrained = backbone == "efficientnet_lite0"  # the others have no offline weights
    spec = FeatureSetParams(backbone=backbone, weights="imagenet" if pretrained else "none",
                            dtype=None if pretrained else "float32")
    records = read_manifest(manifest)
    n = len(records)
    if method == "shoulders":
        baseline = _rss_mb()
        images = images_by_hash(records)
        result = extract_feature_set(spec, ExtractParams(), sorted(images), {h: r.path for h, r in images.items()},
                                     out=work / "features.zarr", progress=False)
        seconds = result.extract_seconds + result.finalize_seconds
        batch = result.runtime.batch_size
        after_first = seconds - result.first_batch_seconds
        return {"images": n, "seconds": seconds, "rss_mb": _rss_mb(), "baseline_mb": baseline,
                "batch_size": batch, "startup_seconds": result.first_batch_seconds,
                "steady_images_per_s": (n - batch) / after_first}
    cut = build_cut_model(spec, seed=0)
    size = cut.provenance["input_size"]
    baseline = _rss_mb()
    if method == "naive":
        started = time.perf_counter()
        x = np.stack([keras.utils.img_to_array(keras.utils.load_img(r.path, target_size=(size, size)))
                      for r in records])
        features = cut.model.predict(cut.preprocess(x), batch_size=32, verbose=0)
        np.save(work / "features.npy", features)
        seconds = time.perf_counter() - started
        return {"images": n, "seconds": seconds, "rss_mb": _rss_mb(), "baseline_mb": baseline, "batch_size": 32}
    infer = compile_inference(cut.model, cut.preprocess, dtype="float32", jit_compile=False)
    batch_size = resolve_runtime(ExtractParams()).batch_size  # the ceiling of the stage's own configuration
    batch = tf.random.uniform((batch_size, size, size, 3), 0, 255, seed=0)
    infer(batch)[0].numpy()  # trace once: the ceiling excludes tracing
    started = time.perf_counter()
    for _ in range(-(-n // batch_size)):
        infer(batch)[0].numpy()
    seconds = time.perf_counter() - started
    images = -(-n // batch_size) * batch_size
    return {"images": images, "seconds": seconds, "rss_mb": _rss_mb(), "baseline_mb": baseline,
            "batch_size": batch_size}


def flops_per_image(backbone: str) -> float:
    """Floating-point operations of one image through the truncated model (TF profiler, frozen graph)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from pipeline.backbones import build_cut_model
    from pipeline.config import FeatureSetParams

    cut = build_cut_model(FeatureSetParams(backbone=backbone, weights="none"), seed=0)
    size = cut.provenance["input_size"]
    function = tf.function(lambda x: cut.model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, size, size, 3), tf.float32))
    frozen = convert_variables_to_constants_v2(function)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=options)
    return float(info.total_float_ops)


# --------------------------------------------------------------------------- driver


def naive_fits(backbone: str, n: int, size: int = 224) -> bool:
    """Whether the naive way's image arrays (loaded, preprocessed copy) fit in a quarter of this machine's RAM."""
    need = 2 * n * size * size * 3 * 4
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram / 4:
        print(f"  {backbone} naive n={n}: skipped, its arrays alone need {need / 2**30:.1f} GiB", file=sys.stderr)
        return False
    return True


def _spawn(args: list[str]) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_lite0,vgg16")
    parser.add_argument("--images", default="1000,48", help="images per backbone (comma list, same order)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=0, help="also run naive and shoulders on K× the images")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "BACKBONE", "MANIFEST", "WORKDIR"),
                        help=argparse.SUPPRESS)
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
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="shoulders-bench-") as tmp:
        tmp = Path(tmp)
        largest = max(counts) * max(1, args.scale)
        photos = make_photos(tmp / "photos", largest)
        for backbone, n in zip(backbones, counts):
            flops = _spawn(["--flops", backbone])["flops"]
            plans = [(n, m) for m in METHODS]
            if args.scale > 1:
                plans += [(n * args.scale, m) for m in ("naive", "shoulders")
                          if m == "shoulders" or naive_fits(backbone, n * args.scale)]
            results: dict[tuple[int, str], list[dict]] = {plan: [] for plan in plans}
            for repeat in range(args.repeats):
                for count, method in plans:
                    if count != n and repeat > 0:
                        continue  # the scaled runs are for memory: once is enough
                    manifest = tmp / f"manifest_{count}.csv"
                    if not manifest.exists():
                        write_manifest(photos[:count], manifest)
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    results[(count, method)].append(_spawn(["--worker", method, backbone, str(manifest), str(work)]))
                    print(f"  {backbone} {method} n={count} run {repeat + 1}: "
                          f"{results[(count, method)][-1]}", file=sys.stderr)
            raw[backbone] = {f"{m}@{c}": r for (c, m), r in results.items()}
            keys = ("images", "seconds", "rss_mb", "baseline_mb", "startup_seconds", "steady_images_per_s")
            median = {plan: {k: statistics.median(r[k] for r in rs) for k in keys if k in rs[0]}
                      for plan, rs in results.items()}
            speed = {plan: m["images"] / m["seconds"] for plan, m in median.items()}
            for plan in plans:
                count, method = plan
                rows.append({
                    "backbone": backbone, "method": method, "images": count,
                    "images_per_s": speed[plan], "gflop_per_s": speed[plan] * flops / 1e9,
                    "peak_rss_mb": median[plan]["rss_mb"], "gflop_per_image": flops / 1e9,
                    "vs_naive": speed[plan] / speed[(n, "naive")],
                    "vs_compute": speed[plan] / speed[(n, "compute")],
                    "startup_s": median[plan].get("startup_seconds"),
                    "steady_vs_compute": (median[plan]["steady_images_per_s"] / speed[(n, "compute")]
                                          if "steady_images_per_s" in median[plan] else None),
                })
    print()
    print(f"{'backbone':<20} {'method':<10} {'images':>6} {'img/s':>8} {'GFLOP/img':>9} {'GFLOP/s':>8} "
          f"{'peak RSS MB':>11} {'×naive':>7} {'×compute':>8} {'start-up s':>10} {'after start-up ×compute':>23}")
    for r in rows:
        startup = f"{r['startup_s']:>10.2f}" if r["startup_s"] is not None else f"{'':>10}"
        steady = f"{r['steady_vs_compute']:>23.2f}" if r["steady_vs_compute"] is not None else f"{'':>23}"
        print(f"{r['backbone']:<20} {r['method']:<10} {r['images']:>6} {r['images_per_s']:>8.2f} "
              f"{r['gflop_per_image']:>9.2f} {r['gflop_per_s']:>8.1f} {r['peak_rss_mb']:>11.0f} "
              f"{r['vs_naive']:>7.2f} {r['vs_compute']:>8.2f} {startup} {steady}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "raw": raw}, indent=2))


if __name__ == "__main__":
    main()
