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

FEATURES = {"mv2": {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_5_add", "size": 64, "alpha": 0.5}}


def done_chunks(store_root: Path, pattern: str = "*.zarr") -> tuple[int, int]:
    """(chunks ticked done, chunks) of the one store matching ``pattern`` under ``store_root``."""
    stores = list(store_root.glob(pattern)) if store_root.is_dir() else []
    if not stores:
        return 0, 1
    try:
        done = zarr.open_group(stores[0], mode="r")["done"][...]
    except (KeyError, ValueError, FileNotFoundError):  # still being created
        return 0, 1
    return int(done.sum()), int(done.size)


def chunk_files(store: Path) -> dict[str, tuple[int, int]]:
    chunks = store / "X" / "c"
    return {
        p.relative_to(chunks).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in chunks.rglob("*")
        if p.is_file()
    }


def kill_after(command: list[str], env: dict, store_root: Path, pattern: str, chunks: int) -> None:
    """Run ``command`` and SIGKILL it once ``chunks`` chunks of its store are written."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done, total = 0, 1
    while time.monotonic() < deadline and process.poll() is None:
        done, total = done_chunks(store_root, pattern)
        if done >= chunks:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    assert 0 < done < total


def test_sigkill_then_resume_is_bit_identical(in_tmp):
    write_image_folder(in_tmp / "images", classes=3, per_class=80, size=(64, 64))
    write_params(
        in_tmp / "params.yaml", tiny_params("images", features=FEATURES, extract={"batch_size": 4, "chunk_mb": 0.02})
    )
    prepare.main(["--manifest", "data/manifest.csv", "--report", "reports/prepare.json", "--no-progress"])
    # The reference: an uninterrupted run.
    extract.main(["--feature-set", "mv2", "--out", "reference/mv2.zarr", "--no-progress"])

    command = [
        sys.executable,
        "-m",
        "pipeline.stages.extract",
        "--feature-set",
        "mv2",
        "--out",
        "features/mv2.zarr",
        "--no-progress",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    partial = in_tmp / "features" / ".incomplete"
    kill_after(command, env, partial, "*.zarr", 2)
    [store] = partial.glob("*.zarr")
    before = chunk_files(store)
    done_at_kill = np.flatnonzero(zarr.open_group(store, mode="r")["done"][...])
    assert len(done_at_kill) >= 1
    assert not (in_tmp / "features" / "mv2.zarr").exists()  # readers never see the half-made store

    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # The rows written before the kill are reused, not counted as computed again.
    chunk_rows = zarr.open_group(in_tmp / "features" / "mv2.zarr", mode="r").attrs["chunk_rows"]
    before_kill = sum(min(240, (c + 1) * chunk_rows) - c * chunk_rows for c in done_at_kill)
    assert (
        f"resuming an interrupted extraction: {before_kill} of its 240 rows were written before, "
        f"{240 - before_kill} to compute" in result.stderr
    )
    assert f"extract mv2: 240 images, {before_kill} reused, {240 - before_kill} computed in" in result.stderr
    final = in_tmp / "features" / "mv2.zarr"
    after = chunk_files(final)
    # Chunks completed before the kill were not recomputed: same file, same inode and mtime.
    for chunk in done_at_kill:
        key = f"{chunk}/0/0/0"
        assert after[key] == before[key], f"chunk {chunk} was rewritten"
    assert len(after) > len(done_at_kill)
    reference = zarr.open_group(in_tmp / "reference" / "mv2.zarr", mode="r")
    resumed = zarr.open_group(final, mode="r")
    np.testing.assert_array_equal(resumed["X"][...], reference["X"][...])
    np.testing.assert_array_equal(resumed["sha256"][...], reference["sha256"][...])
    assert resumed.attrs["rows"] == reference.attrs["rows"] and resumed.attrs["pending"] is None
    assert resumed.attrs["chunk_digests"] == reference.attrs["chunk_digests"]
