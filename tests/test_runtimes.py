"""Every runtime gives TensorFlow's features; OpenVINO extraction needs no TensorFlow; identity decides re-extraction.

Stated tolerance, float32 compute: for every family of the registry (random
weights, the same network on every backend) and for EfficientNet-Lite0 with its
real ImageNet weights, max |Δ| ≤ 1e-5 × max |TensorFlow's features| (float32
rounding: the largest seen is 2.9e-6), and stored as float16 they differ by at
most that plus one float16 rounding, in under 1% of the values. OpenVINO is
checked on every family here; JAX, whose XLA compilation of the 19 networks
takes over six minutes on a 2-core CPU (41 s for EfficientNet-B0 alone), on the
ones that compile fastest while covering depthwise and dense convolutions,
ReLU6, residual additions, max pooling, pre-activation batch norm, LayerNorm and
GELU, and real weights (``benchmarks/runtime_agreement.py`` runs all 19).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import REPO, tiny_params, write_image_folder, write_params
from runtime_features import features

from pipeline.extraction.runtime_choice import installed

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5
TESTS = Path(__file__).resolve().parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, "PYTHONPATH": f"{TESTS}{os.pathsep}{REPO}", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _run(args, cwd=None, **env):
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# Quick to compile under XLA on a CPU, and between them every kind of layer the registry uses but squeeze-and-excite.
JAX_FAMILIES = ("efficientnet_lite0", "efficientnet_lite0_imagenet", "mobilenet_v2", "resnet50_v2", "convnext_tiny")


def within_float16_storage(a: np.ndarray, b: np.ndarray, scale: float) -> bool:
    """Stored as float16, ``a`` and ``b`` differ by at most the float32 tolerance plus one float16 rounding."""
    a16, b16 = np.asarray(a, np.float16).astype(np.float32), np.asarray(b, np.float16).astype(np.float32)
    bound = TOLERANCE * scale + np.spacing(np.maximum(np.abs(a16), np.abs(b16)).astype(np.float16)).astype(np.float32)
    return bool(np.all(np.abs(a16 - b16) <= bound))


def _assert_agree(got: dict, reference: dict) -> None:
    for name, ref in reference.items():
        scale = float(np.abs(ref).max())
        difference = float(np.abs(got[name] - ref).max())
        assert difference <= TOLERANCE * scale, f"{name}: max |Δ| {difference:.3g} = {difference / scale:.2g} × max"
        assert within_float16_storage(ref, got[name], scale), name
        changed = np.mean(np.asarray(ref, np.float16) != np.asarray(got[name], np.float16))
        assert changed < 0.01, (name, float(changed))


@pytest.fixture(scope="module")
def runtime_outputs(tmp_path_factory):
    """Every family's features on TensorFlow (here), OpenVINO (TensorFlow unimportable) and JAX (subprocesses
    that run meanwhile)."""
    folder = tmp_path_factory.mktemp("runtimes")
    workers = {}
    for runtime, extra in (("openvino", ["--no-tensorflow"]), ("jax", ["--only", ",".join(JAX_FAMILIES)])):
        if installed(runtime):
            workers[runtime] = subprocess.Popen(
                [sys.executable, str(TESTS / "runtime_features.py"), runtime, str(folder / f"{runtime}.npz"), *extra],
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
    outputs = {"tensorflow": features("tensorflow")}
    for runtime, worker in workers.items():
        _, errors = worker.communicate(timeout=900)
        assert worker.returncode == 0, errors[-3000:]
        outputs[runtime] = dict(np.load(folder / f"{runtime}.npz"))
    return outputs


def test_every_family_builds_and_runs_at_its_minimum_size(runtime_outputs):
    for name, out in runtime_outputs["tensorflow"].items():
        assert out.shape[0] == 2 and out.ndim in (2, 4) and np.isfinite(out).all(), name


@pytest.mark.parametrize("runtime", ["openvino", "jax"])
def test_every_family_agrees_with_tensorflow(runtime, runtime_outputs):
    if runtime not in runtime_outputs:
        pytest.skip(f"{runtime} is not installed")
    got = dict(runtime_outputs[runtime])
    imported = bool(got.pop("tensorflow_imported"))
    if runtime == "openvino":
        assert not imported  # built, converted and run with every `import tensorflow` failing
    _assert_agree(got, {name: runtime_outputs["tensorflow"][name] for name in got})


def test_openvino_converted_through_tensorflow_in_a_tensorflow_process_agrees_too(runtime_outputs):
    from runtime_features import BATCH, images, specs

    from pipeline.backbones import build_cut_model
    from pipeline.extraction.runtime_choice import Runtime
    from pipeline.extraction.runtimes import compile_step

    spec = specs()["mobilenet_v2"]
    cut = build_cut_model(spec, seed=0)
    step = compile_step(
        Runtime("openvino", "CPU", "float32", BATCH, False), cut.model, cut.preprocess, batch_size=BATCH
    )
    _assert_agree(
        {"mobilenet_v2": step(images(spec.size))}, {"mobilenet_v2": runtime_outputs["tensorflow"]["mobilenet_v2"]}
    )


def test_openvino_streams_batches_in_order_each_as_a_lone_call_gives_it():
    from runtime_features import BATCH, specs

    from pipeline.backbones import build_cut_model
    from pipeline.extraction.runtime_choice import Runtime
    from pipeline.extraction.runtimes import compile_step, stream

    spec = specs()["mobilenet_v2"]
    cut = build_cut_model(spec, seed=0)
    step = compile_step(
        Runtime("openvino", "CPU", "float32", BATCH, False), cut.model, cut.preprocess, batch_size=BATCH
    )
    assert step.streams >= 1 and step.requests >= 1
    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 255, (BATCH, spec.size, spec.size, 3)).astype(np.float32) for _ in range(7)]
    alone = [step(b) for b in batches]
    reused = np.empty_like(batches[0])

    def recycled():  # one array refilled for every batch, as the input pipeline's ring does
        for b in batches:
            reused[...] = b
            yield reused

    streamed = list(stream(step, recycled()))
    scale = max(float(np.abs(a).max()) for a in alone)  # random weights: tiny activations
    assert len(streamed) == 7 and scale > 0
    for got, want in zip(streamed, alone):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    assert np.abs(streamed[0] - streamed[1]).max() > 1e-2 * scale  # distinct batches, not one repeated
    first = next(iter(stream(step, iter(batches))))  # a consumer that stops early leaves nothing running
    np.testing.assert_allclose(first, alone[0], rtol=0, atol=1e-5 * scale)
    plain = [np.asarray(x) for x in stream(lambda b: b[:, :1, 0, 0], batches[:2])]  # a step without stream
    assert [p.shape for p in plain] == [(BATCH, 1)] * 2


@pytest.fixture
def prepared(in_tmp):
    from pipeline.stages import prepare

    write_image_folder(in_tmp / "images", classes=2, per_class=6)
    write_params(in_tmp / "params.yaml", tiny_params("images", extract={"runtime": "tensorflow", "batch_size": 4}))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    return in_tmp


def _runtime(root: Path, **extract) -> None:
    write_params(root / "params.yaml", tiny_params("images", extract={"batch_size": 4, **extract}))


def test_the_extract_stage_runs_without_tensorflow_and_gives_its_features(prepared):
    from pipeline.stages import extract

    extract.main(["--feature-set", "mv2", "--out", "tf/mv2.zarr", "--no-progress"])
    _runtime(prepared, runtime="openvino")
    code = (
        "import sys, no_tensorflow; from pipeline.stages import extract; "
        "extract.main(['--feature-set', 'mv2', '--out', 'ov/mv2.zarr', '--report', 'ov.json', '--no-progress']); "
        "print('tensorflow' in sys.modules)"
    )
    done = _run(["-c", code], cwd=prepared)
    assert done.stdout.strip().splitlines()[-1] == "False"
    tf_store, ov_store = (zarr.open_group(f"{name}/mv2.zarr", mode="r") for name in ("tf", "ov"))
    assert tf_store.attrs["identity"] == ov_store.attrs["identity"]  # one identity: either may serve the other
    assert ov_store.attrs["runs"][-1]["runtime"] == "openvino"
    assert json.loads((prepared / "ov.json").read_text())["runtime"] == "openvino"
    np.testing.assert_array_equal(tf_store["sha256"][...], ov_store["sha256"][...])
    a, b = (np.asarray(store["X"][...], np.float32) for store in (tf_store, ov_store))
    assert within_float16_storage(a, b, float(np.abs(a).max()))


def test_changing_the_runtime_does_not_re_extract_but_bfloat16_does(prepared):
    from pipeline.stages import extract

    args = ["--feature-set", "mv2", "--out", "features/mv2.zarr", "--report", "report.json", "--no-progress"]
    extract.main(args)
    before = np.asarray(zarr.open_group("features/mv2.zarr", mode="r")["X"][...])
    _runtime(prepared, runtime="openvino")
    extract.main(args)
    assert json.loads(Path("report.json").read_text())["computed"] == 0
    _runtime(prepared, runtime="openvino", precision="bfloat16")
    extract.main(args)
    report = json.loads(Path("report.json").read_text())
    assert report["computed"] == report["images"] == 12
    store = zarr.open_group("features/mv2.zarr", mode="r")
    assert store.attrs["identity"]["compute"] == "bfloat16"
    after = np.asarray(store["X"][...], np.float32)
    assert np.abs(after - before).max() <= 0.02 * np.abs(before).max()  # bfloat16: within 2% (relative to the max)


def test_the_batch_size_is_measured_once_per_machine_and_network(prepared, monkeypatch):
    from pipeline.config import load_params
    from pipeline.extraction import batch_size
    from pipeline.extraction.plan import plan_extraction

    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(prepared / "cache"))
    monkeypatch.setattr(batch_size, "CANDIDATES", (2, 4, 8))
    _runtime(prepared, runtime="openvino", batch_size="auto")
    params = load_params("params.yaml")
    first = plan_extraction(params.features["mv2"], params.extract)
    cached = json.loads((prepared / "cache/batch-sizes.json").read_text())
    (entry,) = cached.values()
    speeds = entry["images_per_second"]
    assert set(speeds) <= {"2", "4", "8"} and first.plan.runtime.batch_size == entry["batch_size"]
    assert entry["batch_size"] == int(max(speeds, key=speeds.get))  # the fastest measured

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(batch_size, "measure", no_measuring)
    again = plan_extraction(params.features["mv2"], params.extract)
    assert again.plan.runtime.batch_size == first.plan.runtime.batch_size


def test_converting_to_openvino_sends_no_telemetry_and_forks_nothing(monkeypatch, tmp_path):
    # OpenVINO's converter reports each conversion (no consent file counts as consent) from a forked process.
    pytest.importorskip("openvino")
    import keras
    from openvino_telemetry.utils.sender import TelemetrySender

    from pipeline.extraction.runtimes.openvino_runtime import to_openvino

    monkeypatch.delenv("CI", raising=False)  # the telemetry is off in CI anyway: test the user's machine
    monkeypatch.setenv("HOME", str(tmp_path))  # a home without OpenVINO's consent file: a first-time user
    sent = []
    monkeypatch.setattr(TelemetrySender, "send", lambda self, backend, message: sent.append(message))
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("os.fork() was called"))
    inputs = keras.Input(shape=(8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    network = to_openvino(model, lambda x: x / 255.0, batch_size=2)
    assert not sent, sent
    assert tuple(network.inputs[0].get_partial_shape().to_shape()) == (2, 8, 8, 3)
