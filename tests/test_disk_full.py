"""A full disk mid-extraction: one line and exit status 1 (not SIGABRT after the line), data intact, resumable.

The abort came after the one-line error: the failed extraction's batch stream,
still holding inferences in flight on OpenVINO's threads, was closed only by
the interpreter's last garbage collection, and an inference finishing then ran
its callback into a finalising interpreter ("FATAL: exception not rethrown",
exit status 134). :func:`pipeline.cli.stage_runner.run_stage` now collects it first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, tiny_params, write_image_folder, write_params

from pipeline.config import SPLITS
from pipeline.stages import prepare
from pipeline.store.contents import stored_rows
from pipeline.store.reader import read_pooled

pytest.importorskip("openvino")

TIMEOUT_S = 300

# A stage whose main() leaves an OpenVINO batch stream suspended with inferences in flight, then fails as a full
# disk makes an extraction fail: with an OSError whose traceback is in a reference cycle (as the errors zarr
# raises through asyncio are), so only a cyclic collection closes the stream.
ABANDONED_STREAM = textwrap.dedent("""
    import errno, os
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from pipeline.extraction.runtimes.openvino_runtime import NetworkStep
    from pipeline.cli.stage_runner import run_stage

    def slow_network():
        x = ops.parameter([4, 32, 96, 96], np.float32)
        y, w = x, ops.constant(np.full((32, 32, 3, 3), 0.01, np.float32))
        for _ in range(16):
            y = ops.relu(ops.convolution(y, w, [1, 1], [1, 1], [1, 1], [1, 1]))
        return ov.Core().compile_model(ov.Model([y], [x]), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})

    def main():
        stream = NetworkStep(slow_network(), 1).stream(np.ones((4, 32, 96, 96), np.float32) for _ in range(50))
        next(stream)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "features/x.zarr/X/c/0/0/0/0")
        except OSError as error:
            held = error  # noqa: F841 - the frame holds its error: the cycle
            raise

    run_stage(main)
""")


def _environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the stage picks its own, as for a user
    return {**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _one_error_line(stderr: str) -> str:
    assert "FATAL" not in stderr and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_stage_failing_with_inferences_in_flight_exits_1_after_its_one_line():
    done = subprocess.run(
        [sys.executable, "-c", ABANDONED_STREAM], capture_output=True, text=True, timeout=TIMEOUT_S, env=_environment()
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "No space left on device while writing features/x.zarr/X/c/0/0/0/0" in _one_error_line(done.stderr)


@pytest.fixture
def small_disk(tmp_path):
    """A 600 kB tmpfs (root only): a lite0 store of 210 images fills it in its first chunks."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        pytest.skip(
            "no mount command here: test_a_stage_failing_with_inferences_in_flight_exits_1_after_its_one_line "
            "covers the mechanism"
        )
    if made.returncode:
        pytest.skip(
            f"cannot mount a small file system here ({made.stderr.strip()}): "
            "test_a_stage_failing_with_inferences_in_flight_exits_1_after_its_one_line covers the mechanism"
        )
    yield mount
    subprocess.run(["umount", str(mount)], check=True, timeout=30)


@pytest.mark.slow
def test_a_full_disk_while_creating_a_store_ends_in_one_line_and_exit_1_and_the_rerun_resumes(in_tmp, small_disk):
    write_image_folder(in_tmp / "images", classes=3, per_class=70, size=(64, 64))
    params = tiny_params("images", extract={"runtime": "openvino", "chunk_mb": 1.0, "batch_size": 16})
    params["features"] = {
        "lite0": {"backbone": "efficientnet_lite0", "weights": "none", "cut": "top_activation", "size": 224}
    }
    write_params(in_tmp / "params.yaml", params)
    prepare.main(
        [
            "--manifest",
            "data/manifest.csv",
            "--report",
            "reports/prepare.json",
            "--summary",
            "reports/prepare.md",
            "--metrics",
            "reports/data_metrics.json",
            "--no-progress",
        ]
    )
    (in_tmp / "features").symlink_to(small_disk)
    command = [
        sys.executable,
        "-m",
        "pipeline.stages.extract",
        "--feature-set",
        "lite0",
        "--out",
        "features/lite0.zarr",
        "--hashes",
        "data/content_hashes.txt",
        "--no-progress",
    ]
    env = _environment(SHOULDERS_CACHE_DIR=str(in_tmp / "cache"))

    full = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert full.returncode == 1, full.stderr[-2000:]  # was -6: SIGABRT after the line (134 in a shell)
    assert _one_error_line(full.stderr).startswith("ERROR pipeline: No space left on device while writing")

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True, timeout=30)
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming an interrupted extraction" in resumed.stderr
    assert stored_rows("features/lite0.zarr") == 210
    # Every row of every split read, each chunk checked against its digest: the rows written before are intact.
    read = read_pooled("features/lite0.zarr", SPLITS, poolings=("avg",))
    assert sum(len(read[split]["avg"].X) for split in SPLITS) == 210
