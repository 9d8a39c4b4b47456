"""The OpenVINO network cache: a second extraction of the same network builds nothing and gives the same rows."""

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

from pipeline.extraction import network_cache
from pipeline.extraction.runtime_choice import installed

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not installed("openvino"), reason="needs openvino")]
TESTS = Path(__file__).resolve().parent

# Runs the extract stage in a fresh process; prints whether TensorFlow and Keras were imported.
STAGE = (
    "import sys, json; from pipeline.stages import extract; extract.main(sys.argv[1:]); "
    "print(json.dumps({'tensorflow': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules}))"
)


@pytest.fixture
def project(in_tmp):
    from pipeline.stages import prepare

    write_image_folder(in_tmp / "images", classes=2, per_class=6)
    write_params(in_tmp / "params.yaml", tiny_params("images", extract={"runtime": "openvino", "batch_size": 4}))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    return in_tmp


def _extract(root: Path, out: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(
        PYTHONPATH=f"{TESTS}{os.pathsep}{REPO}", TF_CPP_MIN_LOG_LEVEL="2", SHOULDERS_CACHE_DIR=str(root / "cache")
    )
    done = subprocess.run(
        [sys.executable, "-c", STAGE, "--feature-set", "mv2", "--out", out, "--report", f"{out}.json", "--no-progress"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    return {**imported, **json.loads((root / f"{out}.json").read_text()), "log": done.stderr}


def _rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    store = zarr.open_group(str(path), mode="r")
    return np.asarray(store["sha256"][...]), np.asarray(store["X"][...])


def test_a_second_extraction_reads_the_converted_network_and_imports_no_framework(project):
    cold = _extract(project, "a.zarr")
    assert cold["tensorflow"] and cold["keras"]  # built and converted
    (entry,) = (project / "cache" / network_cache.FOLDER).iterdir()
    assert {p.name for p in entry.iterdir()} == {"entry.json", "model.xml", "model.bin"}
    warm = _extract(project, "b.zarr")
    assert not warm["tensorflow"] and not warm["keras"]  # nothing built
    assert warm["build_seconds"] < cold["build_seconds"]
    hashes_a, a = _rows(project / "a.zarr")
    hashes_b, b = _rows(project / "b.zarr")
    np.testing.assert_array_equal(hashes_a, hashes_b)
    np.testing.assert_array_equal(a, b)  # the same graph: the same rows, bit for bit
    assert (
        zarr.open_group(str(project / "a.zarr"), mode="r").attrs["identity"]
        == zarr.open_group(str(project / "b.zarr"), mode="r").attrs["identity"]
    )


def test_another_cut_or_batch_size_is_another_entry(project):
    _extract(project, "a.zarr")
    params = tiny_params("images", extract={"runtime": "openvino", "batch_size": 2})
    write_params(project / "params.yaml", params)
    assert _extract(project, "b.zarr")["keras"]  # another batch size: converted again
    params["features"]["mv2"]["cut"] = "block_1_project_BN"
    write_params(project / "params.yaml", params)
    other = _extract(project, "c.zarr")
    assert other["keras"]
    assert len(list((project / "cache" / network_cache.FOLDER).iterdir())) == 3
    assert not np.array_equal(_rows(project / "c.zarr")[1], _rows(project / "a.zarr")[1])  # not a's graph


def test_an_unreadable_entry_is_converted_again(project):
    _extract(project, "a.zarr")
    (entry,) = (project / "cache" / network_cache.FOLDER).iterdir()
    (entry / "entry.json").write_text("{not json", encoding="utf-8")
    again = _extract(project, "b.zarr")
    assert again["keras"] and "unreadable" in again["log"]
    np.testing.assert_array_equal(_rows(project / "a.zarr")[1], _rows(project / "b.zarr")[1])
    assert json.loads((entry / "entry.json").read_text())["outputs"] == 1  # rewritten whole


def test_only_networks_pinned_by_a_file_hash_or_random_are_cached():
    assert network_cache.cacheable({"weights": "none", "weights_sha256": None})
    assert network_cache.cacheable({"weights": "imagenet", "weights_sha256": "ab" * 32})
    assert not network_cache.cacheable({"weights": "imagenet", "weights_sha256": None})  # Keras' own download
    assert not network_cache.cacheable(None)


def test_the_key_changes_with_what_the_graph_depends_on():
    identity = {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_2_add", "input_size": 32}
    key = network_cache.entry_key(identity, batch_size=4, keras_backend="tensorflow")
    assert key == network_cache.entry_key(dict(identity), batch_size=4, keras_backend="tensorflow")
    assert key != network_cache.entry_key(identity, batch_size=8, keras_backend="tensorflow")
    assert key != network_cache.entry_key(identity, batch_size=4, keras_backend="openvino")
    assert key != network_cache.entry_key({**identity, "cut": "block_1_add"}, batch_size=4, keras_backend="tensorflow")
