"""The extract stage on a GPU under Keras + JAX: end to end, compute only, the decode ceiling, agreement with a CPU run.

Run by ``benchmarks/gpu_check.sh`` on a machine with JAX (CUDA) and no
TensorFlow; works on a CPU as well (a rehearsal: JAX's CPU backend, slowly).
It builds a small project in ``--work``:

1. ``--images`` photo-sized JPEGs (500×375, made from scikit-image's bundled
   photographs in a process pool), as a two-class ImageFolder;
2. ``params.yaml``: the repository's, with the one feature set ``--feature-set``
   (default the repository's ``lite0_top``: EfficientNet-Lite0 at 224 with its
   ImageNet weights) and ``extract.runtime: jax``, ``precision``, ``batch_size``;
3. the stages prepare, catalog, check and extract, each as its own process with
   the command line ``dvc.yaml`` gives it (``dvc`` itself is not needed).

Then it measures, on the same files:

- **end to end**: the extract stage's own report (decode → inference → Zarr
  writes, overlapped), also after its first batch (start-up and XLA compilation
  excluded), and the whole stage process's wall time;
- **compute only**: the stage's compiled step (the same runtime, precision and
  batch size) on one host batch, repeated: the input pipeline removed;
- **decode ceiling**: the stage's input pipeline alone (threads, one per core),
  and the same decode + resize in a process pool of every core;
- **agreement**: the extract stage again, on the CPU (``JAX_PLATFORMS=cpu``,
  float32), over the first ``--subset`` images; both stores' rows compared by
  image hash (relative L2 difference, worst element relative to the features'
  largest magnitude). Mixed float16 on the GPU against float32 on the CPU
  passes when the relative L2 difference is at most 2% (the bound the
  bfloat16 opt-in is held to).

Usage::

    bash benchmarks/gpu_check.sh                 # on the GPU machine (wheels beside it in .whl/)
    python benchmarks/gpu_check.py --images 64 --subset 16 --batch-size 16 --precision float32   # a CPU rehearsal
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "jax")

from benchmarks.photos import make_photos  # noqa: E402

STAGES = ("prepare", "catalog", "check", "extract")
AGREEMENT_BOUND = 0.02  # relative L2, GPU (mixed float16) against CPU (float32)


# --------------------------------------------------------------------------- the project


def stage_command(stage: str, key: str) -> list[str]:
    """The stage's command line as dvc.yaml gives it (``${key}`` substituted for a foreach stage)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    command = spec["do"]["cmd"] if "foreach" in spec else spec["cmd"]
    return shlex.split(command.replace("${key}", key))


def write_project(folder: Path, photos: list[Path], key: str, extract: dict) -> None:
    """A project over ``photos`` with the repository's params, one feature set and ``extract`` overrides."""
    source = folder / "source"
    for i, photo in enumerate(photos):
        target = source / f"c{i % 2}" / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(photo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = "source"
    params["features"] = {key: params["features"][key]}
    params["extract"].update(extract)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stages(folder: Path, key: str, env: dict) -> dict:
    """Run the stages up to extract in ``folder``; the extract stage's report and its process's wall time."""
    environment = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    wall = {}
    for stage in STAGES:
        command = [sys.executable if part == "python" else part for part in stage_command(stage, key)]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True)
        wall[stage] = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"stage {stage} failed in {folder} (exit {done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads((folder / "reports" / "extract" / f"{key}.json").read_text())
    return {**report, "stage_wall_seconds": wall["extract"]}


# --------------------------------------------------------------------------- measurements


def heads_stage(folder: Path, key: str, env: dict) -> str:
    """The heads stage (default grid) on the extracted store, as dvc.yaml runs it for one store: wall seconds."""
    environment = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    out = folder / "heads-check" / ("cpu" if env else "device")
    command = [
        sys.executable,
        "-m",
        "pipeline.stages.heads",
        "--features",
        f"features/{key}.zarr",
        "--out",
        str(out / key),
        "--manifest",
        "data/manifest.csv",
        "--no-progress",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1][:300]}"
    scores = json.loads((out / key / "scores.json").read_text())
    dense = sum(r["fit_seconds"] for r in scores["variants"] if r["kind"] == "dense")
    return f"{wall:.1f} s wall, {len(scores['variants'])} variants, dense heads {dense:.1f} s"


def compute_only(folder: Path, key: str, repeats: int) -> dict:
    """The stage's compiled step on one host batch, ``repeats`` times after a warm-up: images per second."""
    from pipeline.config import feature_set, load_params
    from pipeline.extraction.plan import plan_extraction

    params = load_params(folder / "params.yaml")
    backbone = plan_extraction(feature_set(params, key), params.extract)
    batch_size = backbone.plan.runtime.batch_size
    size = backbone.cut.provenance["input_size"]
    batch = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    step = backbone.step()
    step(batch)
    step(batch)  # warm: compiled, buffers allocated
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step(batch)  # returns host numpy: the device work has finished
        times.append(time.perf_counter() - started)
    return {
        "batch_size": batch_size,
        "images_per_second": batch_size / statistics.median(times),
        "runtime": backbone.plan.runtime.name,
        "device": backbone.plan.runtime.device,
        "precision": backbone.plan.runtime.precision,
    }


def _decode_one(task: tuple[str, int]) -> int:
    from pipeline.extraction.inputs import load_and_resize

    load_and_resize(*task)
    return 1


def decode_ceiling(paths: list[str], size: int, batch_size: int) -> dict:
    """Images per second of the stage's input pipeline alone, and of decode + resize in a process pool."""
    from pipeline.extraction.inputs import image_batches, parallel_calls

    started = time.perf_counter()
    n = sum(len(batch) for batch in image_batches(paths, size=size, batch_size=batch_size))
    threads = n / (time.perf_counter() - started)
    workers = parallel_calls()
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_one, [(p, size) for p in paths[:workers]]))  # start the workers
        started = time.perf_counter()
        n = sum(pool.map(_decode_one, [(p, size) for p in paths], chunksize=16))
        processes = n / (time.perf_counter() - started)
    return {"cores": workers, "threads_images_per_second": threads, "processes_images_per_second": processes}


def rows_by_hash(store: Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(store), mode="r")
    hashes = [str(h) for h in group["sha256"][...]]
    X = np.asarray(group["X"][: len(hashes)], dtype=np.float32)
    return {h: X[i] for i, h in enumerate(hashes) if h}


def agreement(gpu_store: Path, cpu_store: Path) -> dict:
    """GPU rows against CPU rows of the same images: relative L2 and worst element (relative to the largest)."""
    gpu, cpu = rows_by_hash(gpu_store), rows_by_hash(cpu_store)
    common = sorted(set(gpu) & set(cpu))
    a = np.stack([gpu[h] for h in common])
    b = np.stack([cpu[h] for h in common])
    relative_l2 = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    worst = float(np.abs(a - b).max() / np.abs(b).max())
    return {
        "images": len(common),
        "relative_l2": relative_l2,
        "worst_element_relative": worst,
        "bound": AGREEMENT_BOUND,
        "agrees": relative_l2 <= AGREEMENT_BOUND,
    }


# --------------------------------------------------------------------------- driver


def rate(value) -> str:
    return "n/a (one batch)" if value is None else f"{value:,.0f} img/s"


def machine() -> dict:
    import jax

    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "platform": devices[0].platform,
        "device": str(devices[0].device_kind),
        "cpu_cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoulders-gpu-check"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--subset", type=int, default=128, help="images of the CPU agreement run")
    parser.add_argument("--feature-set", default="lite0_top", help="a key of the repository's params.yaml features")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--repeats", type=int, default=20, help="timed steps of the compute-only figure")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    key, work = args.feature_set, args.work
    started = time.perf_counter()
    info = machine()
    print(f"machine: {info}", flush=True)
    photos = make_photos(work / "photos", args.images)
    print(f"{len(photos)} JPEGs 500×375 in {time.perf_counter() - started:.1f} s", flush=True)

    gpu_dir, cpu_dir = work / "device", work / "cpu"
    write_project(gpu_dir, photos, key, {"runtime": "jax", "precision": args.precision, "batch_size": args.batch_size})
    stage = run_stages(gpu_dir, key, {})
    print(f"extract stage on {stage['device']}: {stage}", flush=True)
    compute = compute_only(gpu_dir, key, args.repeats)
    print(f"compute only: {compute}", flush=True)
    size = json.loads((gpu_dir / "reports" / "checks" / f"{key}.json").read_text()).get("input_size", 224)
    decode = decode_ceiling([str(p) for p in photos], size, args.batch_size)
    print(f"decode: {decode}", flush=True)
    write_project(
        cpu_dir,
        photos[: args.subset],
        key,
        {"runtime": "jax", "precision": "float32", "batch_size": min(args.batch_size, 32)},
    )
    cpu = run_stages(cpu_dir, key, {"JAX_PLATFORMS": "cpu"})
    agree = agreement(gpu_dir / "features" / f"{key}.zarr", cpu_dir / "features" / f"{key}.zarr")
    print(f"agreement: {agree}", flush=True)
    heads = {
        where: heads_stage(gpu_dir, key, env) for where, env in (("device", {}), ("host CPU", {"JAX_PLATFORMS": "cpu"}))
    }
    print(f"heads stage: {heads}", flush=True)

    e2e = stage["images_per_second"]
    ceiling = max(decode["threads_images_per_second"], decode["processes_images_per_second"])
    rows = [
        ("extract stage, end to end (decode → inference → Zarr)", rate(e2e)),
        ("  after its first batch (start-up, compilation excluded)", rate(stage["steady_images_per_second"])),
        (
            "  whole stage process (imports, build, compile, verify)",
            f"{stage['computed'] / stage['stage_wall_seconds']:,.0f} img/s ({stage['stage_wall_seconds']:.1f} s)",
        ),
        (
            f"compute only ({compute['runtime']} {compute['device']} {compute['precision']}, "
            f"batch {compute['batch_size']})",
            f"{compute['images_per_second']:,.0f} img/s",
        ),
        (
            f"decode + resize, the stage's threads ({decode['cores']} cores)",
            f"{decode['threads_images_per_second']:,.0f} img/s",
        ),
        (
            f"decode + resize, a process pool ({decode['cores']} cores)",
            f"{decode['processes_images_per_second']:,.0f} img/s",
        ),
        ("end to end / min(compute, decode ceiling)", f"{e2e / min(compute['images_per_second'], ceiling):.2f}"),
        *((f"heads stage, default grid on {key}, JAX on the {where}", value) for where, value in heads.items()),
        (
            f"agreement with the CPU (float32), {agree['images']} images",
            f"relative L2 {agree['relative_l2']:.2e}, worst element {agree['worst_element_relative']:.2e} "
            f"({'within' if agree['agrees'] else 'OUTSIDE'} {AGREEMENT_BOUND:.0%})",
        ),
    ]
    print(
        f"\nshoulders GPU check: {info['device']} ({info['platform']}), JAX {info['jax']}, "
        f"{args.images} JPEGs 500×375, {key}, batch {args.batch_size}, {args.precision}"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "stage": stage,
                    "compute": compute,
                    "decode": decode,
                    "agreement": agree,
                    "cpu_stage": cpu,
                    "heads": heads,
                },
                indent=2,
            )
        )
    if not agree["agrees"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
