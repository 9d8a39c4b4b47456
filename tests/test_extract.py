"""The extract stage's runtime choices: batch size, XLA and mixed precision."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_params, write_image_folder, write_params

from pipeline.config import parse_params
from pipeline.extraction.runner import regroup
from pipeline.extraction.runtime_choice import resolve_runtime
from pipeline.stages import extract, prepare
from pipeline.store.reader import open_feature_set, open_store
from pipeline.store.writer import ChunkWrite


def test_auto_runtime_follows_the_device():
    from pipeline.extraction.runtime_choice import BATCH_GPU, jax_gpu

    gpu = jax_gpu()
    runtime = resolve_runtime(parse_params({}).extract)
    assert (runtime.name, runtime.device) == (("jax", "GPU") if gpu else ("openvino", "CPU"))
    assert (runtime.precision, runtime.batch_size, runtime.jit_compile) == (
        ("float16", BATCH_GPU, True) if gpu else ("float32", None, False)
    )  # None: measured when the model is built
    forced = resolve_runtime(
        parse_params(
            {"extract": {"runtime": "tensorflow", "batch_size": 7, "jit_compile": True, "precision": "bfloat16"}}
        ).extract
    )
    assert (forced.name, forced.batch_size, forced.jit_compile, forced.compute) == ("tensorflow", 7, True, "bfloat16")


def test_bad_runtime_params_are_named():
    from pipeline.config import ParamsError

    with pytest.raises(ParamsError, match="extract.jit_compile"):
        parse_params({"extract": {"jit_compile": "yes"}})
    with pytest.raises(ParamsError, match="extract.batch_size"):
        parse_params({"extract": {"batch_size": 0}})


def test_regroup_cuts_batches_into_chunks():
    batches = [np.arange(i, i + 3) for i in range(0, 12, 3)]  # 4 batches of 3 rows
    jobs = [ChunkWrite(0, range(0, 5)), ChunkWrite(1, range(5, 10)), ChunkWrite(2, range(10, 12))]
    chunks = list(regroup(iter(batches), jobs))
    assert [job.chunk for job, _ in chunks] == [0, 1, 2]
    np.testing.assert_array_equal(np.concatenate([b for _, b in chunks]), np.arange(12))


def test_regroup_refuses_rows_beyond_the_last_job():
    batches = [np.arange(i, i + 3) for i in range(0, 12, 3)]
    with pytest.raises(ValueError, match="3 rows beyond the last job"):
        list(regroup(iter(batches), [ChunkWrite(0, range(0, 9))]))


@pytest.mark.parametrize("option, value", [("precision", "float16"), ("jit_compile", True)])
def test_xla_and_float16_compute_change_results_by_float16_rounding_only(in_tmp, option, value):
    write_image_folder(in_tmp / "images", classes=2, per_class=6)
    tiny = {"runtime": "tensorflow", "batch_size": 4, "chunk_mb": 0.004}
    write_params(in_tmp / "params.yaml", tiny_params("images", extract=tiny))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "features/plain.zarr", "--no-progress"])
    write_params(in_tmp / "params.yaml", tiny_params("images", extract={**tiny, option: value}))
    extract.main(["--feature-set", "mv2", "--out", "features/other.zarr", "--no-progress"])
    plain = open_feature_set("features/plain.zarr", "train", pooling="none")
    other = open_feature_set("features/other.zarr", "train", pooling="none")
    # Recorded with the run; not part of the identity, since they change float16-stored features by rounding only.
    key = {"precision": "compute", "jit_compile": "jit_compile"}[option]
    runs = [open_store(f"features/{name}.zarr").attrs["runs"][-1] for name in ("plain", "other")]
    assert runs[0][key] != runs[1][key]
    assert open_store("features/plain.zarr").attrs["identity"] == open_store("features/other.zarr").attrs["identity"]
    a, b = np.asarray(plain.X, np.float32), np.asarray(other.X, np.float32)
    np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2 * np.abs(a).max())


def test_compute_precision_is_part_of_the_identity_when_it_exceeds_storage_rounding():
    from pipeline.extraction.plan import planned_identity

    def identity(**extract):
        params = parse_params(tiny_params("images", extract=extract))
        return planned_identity(params.features["mv2"], params.extract, "block_2_add")

    assert identity(dtype="float32", precision="float32")["compute"] == "float32"
    assert identity(dtype="float32", precision="float16")["compute"] == "mixed_float16"
    assert identity(dtype="float32") is None  # auto: the device decides, only resolving the runtime tells
    # Stored as float16, float32 and float16 compute (and every float32 runtime) share one store ...
    assert identity(precision="float32") == identity(precision="float16") == identity()
    assert "compute" not in identity()
    # ... but bfloat16 compute (about 1% relative) does not.
    assert identity(precision="bfloat16")["compute"] == "bfloat16"
    assert identity(runtime="openvino") == identity(runtime="tensorflow") == identity(runtime="jax")


def test_extract_stage_writes_to_an_fsspec_url(in_tmp):
    write_image_folder(in_tmp / "images", classes=2, per_class=6)
    write_params(in_tmp / "params.yaml", tiny_params("images"))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "memory://remote/mv2.zarr", "--no-progress"])
    local = open_feature_set("features/mv2.zarr", "train", pooling="none")
    remote = open_feature_set("memory://remote/mv2.zarr", "train", manifest="data/manifest.csv", pooling="none")
    np.testing.assert_array_equal(remote.X, local.X)
    assert remote.ids.tolist() == local.ids.tolist()


def test_the_compiled_step_is_traced_once_for_every_shard(in_tmp):
    from pipeline.config import load_params
    from pipeline.extraction.plan import plan_extraction
    from pipeline.extraction.runner import run_jobs
    from pipeline.manifest import images_by_hash, read_manifest

    write_image_folder(in_tmp / "images", classes=2, per_class=6)
    write_params(in_tmp / "params.yaml", tiny_params("images", extract={"runtime": "tensorflow", "batch_size": 4}))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    params = load_params("params.yaml")
    backbone = plan_extraction(params.features["mv2"], params.extract)
    images = images_by_hash(read_manifest("data/manifest.csv"))
    hashes = sorted(images)
    paths = {h: r.path for h, r in images.items()}
    blocks = []
    for rows in (range(0, 7), range(7, len(hashes))):  # two shards, as a Dask worker runs them one after the other
        run_jobs(
            backbone,
            [ChunkWrite(0, rows)],
            hashes,
            paths,
            lambda job, block: blocks.append(block),
            name="shard",
            progress=False,
        )
    assert [len(b) for b in blocks] == [7, len(hashes) - 7]
    assert backbone.step() is backbone.step()
    assert backbone.step().traced.experimental_get_tracing_count() == 1


def test_the_precision_guard_counts_losses_and_overflow_as_the_elementwise_rule_does():
    from pipeline.extraction.precision import PrecisionGuard

    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 4, 4, 16)).astype(np.float32)
    features[0, 0, 0, :5] = 0.0
    features[1, 0, 0, :3] = 1e-9  # non-zero, round to 0 in float16
    guard = PrecisionGuard("fs", "float16")
    stored = guard.store(features)
    assert stored.dtype == np.float16 and guard.lost == 3 and guard.nonzero == features.size - 5
    assert guard.lost == np.count_nonzero((features != 0) & (stored == 0))
    features[2, 1, 1, 1] = np.nan  # refused when finalising, not an overflow here
    PrecisionGuard("fs", "float16").store(features)
    features[3, 0, 0, 0] = 1e6
    with pytest.raises(ValueError, match=r"overflow float16 \(1 values beyond its range; largest \|value\| 1e\+06\)"):
        PrecisionGuard("fs", "float16").store(features)
    tiny = np.full((2, 8), 1e-9, np.float32)
    with pytest.raises(ValueError, match="underflow float16: 100% of the non-zero values"):
        PrecisionGuard("fs", "float16").store(tiny)
    assert PrecisionGuard("fs", "float32").store(tiny) is tiny
    edge = np.ones((1, 205), np.float32)
    edge[0, :5] = [65504.0, 65519.0, -0.0, 6e-8, -1e-8]  # float16's max, rounds down to it, -0, subnormal, underflow
    guard = PrecisionGuard("fs", "float16")
    guard.store(edge)
    assert (guard.lost, guard.nonzero) == (1, 204)
    with pytest.raises(ValueError, match=r"overflow float16 \(1 values"):
        PrecisionGuard("fs", "float16").store(np.array([[1.0, -65520.0]], np.float32))  # rounds to -inf


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32"])
def test_nonzero_values_are_counted_on_their_bits_as_numpy_counts_them(dtype):
    from pipeline.extraction.precision import _count_nonzero

    values = np.array(
        [0.0, -0.0, 1.0, -2.5, 1e-30, np.inf, -np.inf, np.nan] if dtype != "int32" else [0, 1, -1, 0, 7], dtype
    )
    if dtype.startswith("float"):
        values = np.concatenate([values, np.nextafter(np.zeros(3, dtype), 1)])  # the smallest subnormal
    assert _count_nonzero(values) == np.count_nonzero(values)
    assert _count_nonzero(values[::2]) == np.count_nonzero(values[::2])  # strided: counted on a copy
