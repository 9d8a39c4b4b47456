"""Cache integrity: `shoulders verify` finds corrupt, stale, incomplete and orphan stores; a full disk loses nothing."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from conftest import tiny_params, write_params
from pipeline import cli
from pipeline.provenance import file_sha256
from pipeline.config import parse_params
from pipeline.manifest import Record, write_manifest
from pipeline.store.layout import store_path
from pipeline.store.reader import open_feature_set
from pipeline.store.writer import FeatureWriter, SplitRows
from pipeline.store.verify import expected_provenance, verify_features, verify_store

SHAPE = (3, 3, 4)
ROWS = {"train": 10, "val": 3, "test": 4}


def _manifest(path, *, extra=0):
    records = [Record(id=f"{s}/{i}.png", path=f"img/{s}/{i}.png", label=i % 2, class_name="ab"[i % 2], split=s,
                      sha256=f"{s}{i}", width=8, height=8)
               for s, n in ROWS.items() for i in range(n + (extra if s == "train" else 0))]
    write_manifest(records, path)
    return path


def _provenance(manifest, **changes):
    provenance = {"backbone": "mobilenet_v2", "weights": "none", "weights_sha256": None, "cut": "block_2_add",
                  "cut_index": 27, "n_layers": 154, "input_size": 32, "alpha": 0.35, "seed": 0,
                  "dtype": "float16", "chunk_rows": 4, "manifest_sha256": file_sha256(manifest)}
    return {**provenance, **changes}


def _data(seed):
    rng = np.random.default_rng(seed)
    return {s: rng.normal(size=(n, *SHAPE)).astype(np.float32) for s, n in ROWS.items()}


def _write(features, provenance, data, key="mv2", *, finalize=True):
    splits = {s: SplitRows(np.arange(n) % 2, np.array([f"{s}/{i}.png" for i in range(n)])) for s, n in ROWS.items()}
    writer = FeatureWriter(store_path(features, key), provenance, splits, ["a", "b"], SHAPE, "float16", 4)
    for split, X in data.items():
        for chunk in writer.pending_chunks(split):
            writer.write_chunk(split, chunk, X[writer.chunk_rows_of(split, chunk).start:writer.chunk_rows_of(split, chunk).stop])
    return writer.finalize() if finalize else writer


@pytest.fixture
def setup(tmp_path):
    """A complete store made with the params and manifest of tmp_path."""
    manifest = _manifest(tmp_path / "data" / "manifest.csv")
    params = parse_params(tiny_params("images"))
    path = _write(tmp_path / "features", _provenance(manifest), _data(0))
    return tmp_path, params, manifest, path


def _verify_one(setup, params=None):
    root, default, manifest, path = setup
    params = params or default
    spec = params.features.get(path.stem)
    return verify_store(path, expected=None if spec is None else expected_provenance(spec, params.extract),
                        manifest_sha256=file_sha256(manifest), manifest_rows=ROWS)


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_sound_store_is_ok(setup):
    report = _verify_one(setup)
    assert report.state == "ok" and report.problems == () and not report.failing


def test_a_flipped_byte_is_detected_not_read_as_data(setup):
    chunk = setup[3] / "train/X/c/1/0/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    report = _verify_one(setup)
    assert report.state == "corrupt"
    assert any("train/X: chunk 1 (rows 4-7) is corrupt" in p for p in report.problems)


def test_a_missing_chunk_is_detected_not_read_as_zeros(setup):
    (setup[3] / "val/X/c/0/0/0/0").unlink()
    report = _verify_one(setup)
    assert report.state == "corrupt" and any("val/X: 1 chunk(s) missing on disk" in p for p in report.problems)


def test_non_finite_values_are_detected(setup):
    zarr.open_group(setup[3], mode="r+")["test"]["X"][1, 0, 0, 0] = np.inf
    report = _verify_one(setup)
    assert report.state == "corrupt" and any("test/X: chunk 0 (rows 0-3): 1 row(s) contain NaN or Inf" in p
                                             for p in report.problems)


def test_data_changed_after_completion_is_detected(setup):
    # Valid, finite, checksummed bytes, but not what was extracted: only the recorded statistics tell.
    zarr.open_group(setup[3], mode="r+")["train"]["X"][4:8] = np.ones((4, *SHAPE), np.float16)
    report = _verify_one(setup)
    assert report.state == "corrupt" and any("train/X" in p and "the data changed since" in p
                                             for p in report.problems)


def test_damaged_array_metadata_is_a_verdict_not_a_crash(setup):
    (setup[3] / "val/X/zarr.json").write_text("{not json")
    report = _verify_one(setup)
    assert report.state == "corrupt" and report.problems[0].startswith("unreadable array metadata")


def test_shapes_that_disagree_with_the_record_are_detected(setup):
    zarr.open_group(setup[3], mode="r+").attrs["feature_shape"] = [3, 3, 5]
    report = _verify_one(setup)
    assert report.state == "corrupt" and any("recorded feature_shape (3, 3, 5)" in p for p in report.problems)


def test_incomplete_store_is_reported(setup):
    zarr.open_group(setup[3], mode="r+").attrs["complete"] = False
    report = _verify_one(setup)
    assert report.state == "incomplete" and report.failing


@pytest.mark.parametrize("change, culprit", [
    ({"cut": "block_3_add"}, "cut: store has 'block_2_add', params say 'block_3_add'"),
    ({"size": 48}, "input_size: store has 32, params say 48"),
    ({"dtype": "float32"}, "dtype: store has 'float16', params say 'float32'"),
    ({"weights": "imagenet", "alpha": 0.5}, "weights: store has 'none', params say 'imagenet'"),
    ({"cut": None}, "params say the last layer (cut: null), store is cut at 'block_2_add' (layer 27 of 154)"),
])
def test_provenance_that_differs_from_params_is_stale(setup, change, culprit):
    raw = tiny_params("images")
    raw["features"]["mv2"].update(change)
    report = _verify_one(setup, parse_params(raw))
    assert report.state == "stale" and any(culprit in p for p in report.problems)


def test_store_of_another_manifest_is_stale(setup):
    root, params, manifest, path = setup
    _manifest(manifest, extra=1)
    report = verify_store(path, expected=expected_provenance(params.features["mv2"], params.extract),
                          manifest_sha256=file_sha256(manifest))
    assert report.state == "stale" and any("another manifest" in p for p in report.problems)


def test_store_without_a_feature_set_is_an_orphan(setup):
    raw = tiny_params("images")
    raw["features"] = {"other": raw["features"]["mv2"]}
    report = _verify_one(setup, parse_params(raw))
    assert report.state == "orphan" and report.failing


def test_folder_report_lists_partials_leftovers_and_missing(setup):
    root, params, manifest, path = setup
    raw = tiny_params("images")
    raw["features"]["later"] = raw["features"]["mv2"]
    partial = _write(root / "features", _provenance(manifest, dtype="float32"), {}, finalize=False)
    partial.write_chunk("train", 0, _data(1)["train"][:4])
    (root / "features" / "mv2.zarr.0123abcd.old").mkdir()
    reports = {(r.key, r.state): r for r in verify_features(root / "features", parse_params(raw), manifest)}
    assert set(reports) == {("mv2", "ok"), ("mv2", "partial"), ("mv2", "leftover"), ("later", "missing")}
    assert reports["mv2", "partial"].problems == ("1 of 5 chunks written; the next extraction with the same "
                                                  "provenance resumes it",)
    assert not any(r.failing for r in reports.values())


def test_cli_exit_status(setup, capsys):
    root, params, manifest, path = setup
    write_params(root / "params.yaml", tiny_params("images"))
    args = ["verify", str(root / "features"), "--params", str(root / "params.yaml"), "--manifest", str(manifest)]
    cli.main(args)
    assert "mv2  ok" in capsys.readouterr().out
    (path / "train/X/c/2/0/0/0").unlink()
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 1
    assert "corrupt" in capsys.readouterr().out


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def disk(monkeypatch):
    """Make the disk 'fill up' after a number of zarr writes under a path fragment."""
    original = LocalStore.set
    state = {"left": None, "under": ""}

    async def set_or_fail(self, key, value):
        if state["left"] is not None and state["under"] in str(self.root / key):
            if state["left"] == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
            state["left"] -= 1
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set_or_fail)
    return state


def test_disk_full_while_writing_chunks_keeps_the_previous_store(setup, disk):
    root, params, manifest, path = setup
    before = _snapshot(path)
    disk.update(left=2, under=".incomplete")  # chunk 0 and its tick fit, then the disk is full
    newer = _provenance(manifest, seed=0, chunk_rows=4, manifest_sha256="0" * 64)
    with pytest.raises(OSError) as error:
        _write(root / "features", newer, _data(1))
    assert error.value.errno == errno.ENOSPC and ".incomplete" in str(error.value)
    assert _snapshot(path) == before
    np.testing.assert_array_equal(open_feature_set(path, "train", pooling="none").X,
                                  _data(0)["train"].astype(np.float16))
    assert _verify_one(setup).state == "ok"
    # Space freed: the next run resumes after the chunk that was written, and replaces the store.
    disk.update(left=None)
    writer = _write(root / "features", newer, _data(1), finalize=False)
    assert writer.partial_path.exists()
    writer.finalize()
    assert open_feature_set(path, "train").provenance["manifest_sha256"] == "0" * 64


def test_disk_full_while_finalizing_keeps_the_previous_store(setup, disk):
    root, params, manifest, path = setup
    before = _snapshot(path)
    writer = _write(root / "features", _provenance(manifest, manifest_sha256="1" * 64), _data(2), finalize=False)
    disk.update(left=0, under=".incomplete")  # marking the new store complete is the write that fails
    with pytest.raises(OSError, match="No space left on device"):
        writer.finalize()
    assert _snapshot(path) == before and _verify_one(setup).state == "ok"
    assert zarr.open_group(writer.partial_path, mode="r").attrs["complete"] is False
