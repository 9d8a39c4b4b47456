"""Extraction on a Dask LocalCluster of worker processes, surviving a killed worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr
from conftest import tiny_params, write_image_folder, write_params

from pipeline.config import load_params
from pipeline.extraction.distributed import extract_distributed, shards_of
from pipeline.manifest import images_by_hash, read_manifest
from pipeline.stages import extract, prepare
from pipeline.store.writer import ChunkWrite

pytestmark = pytest.mark.slow

FEATURES = {"mv2": {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_5_add", "size": 64, "alpha": 0.5}}


def test_shards_are_consecutive_chunk_writes():
    writes = [ChunkWrite(c, range(c * 4, c * 4 + 4)) for c in range(5)]
    assert [[w.chunk for w in s] for s in shards_of(writes, 2)] == [[0, 1], [2, 3], [4]]


def _done(partial_root) -> int:
    stores = list(partial_root.glob("*.zarr")) if partial_root.is_dir() else []
    if not stores:
        return 0
    return int(zarr.open_group(stores[0], mode="r")["done"][...].sum())


def test_killed_worker_mid_run_gives_the_single_process_result(in_tmp):
    from distributed import Client, LocalCluster

    write_image_folder(in_tmp / "images", classes=3, per_class=40, size=(64, 64))
    write_params(
        in_tmp / "params.yaml",
        tiny_params("images", features=FEATURES, extract={"batch_size": 4, "chunk_mb": 0.02, "shard_chunks": 1}),
    )
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "reference/mv2.zarr", "--no-progress"])
    params = load_params()
    images = images_by_hash(read_manifest("data/manifest.csv"))
    paths = {h: r.path for h, r in images.items()}

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2  # two worker processes, not threads
        outcome = {}

        def run():
            try:
                outcome["result"] = extract_distributed(
                    params.features["mv2"],
                    params.extract,
                    sorted(images),
                    paths,
                    out=in_tmp / "features/mv2.zarr",
                    address=client,
                    progress=False,
                )
            except BaseException as error:  # reported by the assertion below
                outcome["error"] = error

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 180
        while _done(in_tmp / "features/.incomplete") < 2 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        done_at_kill = _done(in_tmp / "features/.incomplete")
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=300)
        assert "error" not in outcome, outcome.get("error")
        assert 0 < done_at_kill, "no chunk was written before the kill"
        assert outcome["result"].computed == outcome["result"].rows

    reference = zarr.open_group(in_tmp / "reference/mv2.zarr", mode="r")
    distributed = zarr.open_group(in_tmp / "features/mv2.zarr", mode="r")
    assert distributed.attrs["rows"] == reference.attrs["rows"] == len(images) and not distributed.attrs["pending"]
    np.testing.assert_array_equal(distributed["sha256"][...], reference["sha256"][...])
    np.testing.assert_array_equal(distributed["X"][...], reference["X"][...])
    assert distributed.attrs["chunk_digests"] == reference.attrs["chunk_digests"]


def test_heads_grid_runs_on_the_dask_backend(in_tmp):
    import json

    from distributed import LocalCluster

    from pipeline.stages import heads as heads_stage

    write_image_folder(in_tmp / "images", classes=3, per_class=12)
    heads = {
        "kinds": ["logreg", "svm_linear", "svm_rbf"],
        "n_jobs": 2,
        "logreg": {"C": [0.1, 1.0]},
        "svm_linear": {"C": [0.1]},
        "svm_rbf": {"C": [1.0]},
    }
    write_params(in_tmp / "params.yaml", tiny_params("images", heads=heads))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    extract.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])
    heads_stage.main(["--features", "features", "--out", "local", "--no-progress"])
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        write_params(
            in_tmp / "params.yaml",
            tiny_params("images", heads={**heads, "backend": "dask", "scheduler": cluster.scheduler_address}),
        )
        heads_stage.main(["--features", "features", "--out", "remote", "--no-progress"])
    local = json.loads((in_tmp / "local/mv2/scores.json").read_text())["variants"]
    remote = json.loads((in_tmp / "remote/mv2/scores.json").read_text())["variants"]
    assert [r["variant"] for r in remote] == [r["variant"] for r in local]
    assert [r["val_accuracy"] for r in remote] == [r["val_accuracy"] for r in local]


def test_dask_backend_without_a_scheduler_is_named(in_tmp, monkeypatch):
    from pipeline.stages import heads as heads_stage

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    write_params(in_tmp / "params.yaml", tiny_params("images", heads={"backend": "dask"}))
    with pytest.raises(ValueError, match="heads.scheduler"):
        heads_stage.main(["--features", "features", "--out", "heads"])
