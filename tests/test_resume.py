"""Kill an extraction with SIGKILL part-way, rerun it, and get exactly the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import tiny_params, write_image_folder, write_params
from pipeline.stages import extract, prepare

pytestmark = pytest.mark.slow

FEATURES = {"mv2": {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_5_add", "size": 64,
                    "alpha": 0.5}}


def _done_chunks(partial_root: Path) -> tuple[int, int]:
    stores = list(partial_root.glob("*.zarr")) if partial_root.is_dir() else []
    if not stores:
        return 0, 1
    group = zarr.open_group(stores[0], mode="r")
    done = [group[s]["done"][...] for s in ("train", "val", "test")]
    return int(sum(d.sum() for d in done)), int(sum(d.size for d in done))


def _chunk_files(store: Path) -> dict[str, tuple[int, int]]:
    chunks = store / "train" / "X" / "c"
    return {p.relative_to(chunks).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in chunks.rglob("*") if p.is_file()}


def test_sigkill_then_resume_is_bit_identical(in_tmp):
    write_image_folder(in_tmp / "images", classes=3, per_class=80, size=(64, 64))
    write_params(in_tmp / "params.yaml", tiny_params("images", features=FEATURES,
                                                     extract={"batch_size": 4, "chunk_mb": 0.02}))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
    # The reference: an uninterrupted run.
    extract.main(["--feature-set", "mv2", "--out", "reference/mv2.zarr", "--no-progress"])

    command = [sys.executable, "-m", "pipeline.stages.extract", "--feature-set", "mv2", "--out", "features/mv2.zarr",
               "--no-progress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = in_tmp / "features" / ".incomplete"
    deadline = time.monotonic() + 120
    done, total = 0, 1
    while time.monotonic() < deadline and process.poll() is None:
        done, total = _done_chunks(partial)
        if done >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    assert 0 < done < total
    [store] = partial.glob("*.zarr")
    before = _chunk_files(store)
    done_at_kill = np.flatnonzero(zarr.open_group(store, mode="r")["train"]["done"][...])
    assert len(done_at_kill) >= 1

    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming: " in result.stderr
    final = in_tmp / "features" / "mv2.zarr"
    after = _chunk_files(final)
    # Chunks completed before the kill were not recomputed: same file, same inode and mtime.
    for chunk in done_at_kill:
        key = f"{chunk}/0/0/0"
        assert after[key] == before[key], f"chunk {chunk} was rewritten"
    assert len(after) > len(done_at_kill)
    reference = zarr.open_group(in_tmp / "reference" / "mv2.zarr", mode="r")
    resumed = zarr.open_group(final, mode="r")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(resumed[split]["X"][...], reference[split]["X"][...])
        np.testing.assert_array_equal(resumed[split]["y"][...], reference[split]["y"][...])
    assert resumed.attrs["complete"] is True
