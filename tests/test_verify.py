"""Cache integrity: `shoulders verify` finds corrupt, stale, incomplete and orphan stores; a full disk loses nothing."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import zarr
from conftest import tiny_params
from test_store import CHUNK, NAMES, SHAPE, extract, features_of, records, sha
from zarr.storage import LocalStore

from pipeline.cli import shoulders as cli
from pipeline.config import parse_params
from pipeline.extraction.plan import planned_identity
from pipeline.manifest import write_manifest
from pipeline.store.layout import store_path
from pipeline.store.reader import open_feature_set
from pipeline.store.verify import verify_features, verify_store

CUT = "block_2_add"


def _identity(params, **changes):
    spec = params.features["mv2"]
    return {**planned_identity(spec, params.extract, CUT), **changes}


@pytest.fixture
def setup(tmp_path):
    """A store made with the params and manifest of tmp_path, and the check stage's file."""
    params = parse_params(tiny_params("images"))
    manifest = records(NAMES)
    write_manifest(manifest, tmp_path / "data" / "manifest.csv")
    (tmp_path / "reports" / "checks").mkdir(parents=True)
    (tmp_path / "reports" / "checks" / "mv2.json").write_text(json.dumps({"cut": CUT}))
    path = store_path(tmp_path / "features", "mv2")
    extract(path, [r.sha256 for r in manifest], identity=_identity(params))
    return tmp_path, params, manifest, path


def _verify(setup, **options):
    root, params, _, _ = setup
    return verify_features(
        root / "features", params, root / "data" / "manifest.csv", checks=root / "reports/checks", **options
    )


def _one(setup):
    (report,) = [r for r in _verify(setup) if r.key == "mv2"]
    return report


def _chunk(path, chunk):
    return path / "X" / "c" / str(chunk) / "0" / "0" / "0"


def test_a_sound_store_is_ok(setup):
    report = _one(setup)
    assert report.state == "ok" and report.problems == () and report.notes == ()


def test_a_flipped_byte_is_detected_not_read_as_data(setup):
    path = setup[3]
    chunk = _chunk(path, 1)
    data = bytearray(chunk.read_bytes())
    data[-5] ^= 0x01
    chunk.write_bytes(bytes(data))
    report = _one(setup)
    assert report.state == "corrupt" and any("chunk 1 is corrupt" in p for p in report.problems)


def test_a_missing_chunk_is_detected_not_read_as_zeros(setup):
    _chunk(setup[3], 2).unlink()
    report = _one(setup)
    assert report.state == "corrupt" and any("chunk 2 is missing on disk" in p for p in report.problems)


def test_swapped_chunks_are_detected(setup):
    path = setup[3]
    a, b = _chunk(path, 0), _chunk(path, 3)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    report = _one(setup)
    assert report.state == "corrupt"
    assert [p.split(" (")[0] for p in report.problems] == ["chunk 0", "chunk 3"]


def test_data_changed_after_completion_is_detected(setup):
    path = setup[3]
    X = zarr.open_group(str(path), mode="r+")["X"]
    X[5] = np.asarray(X[5]) + 1  # re-encoded validly: only the digest tells
    report = _one(setup)
    assert report.state == "corrupt" and report.problems == (
        "chunk 1 (rows 4-7) does not match its recorded digest: changed, swapped or truncated since written",
    )


def test_damaged_array_metadata_is_a_verdict_not_a_crash(setup):
    (setup[3] / "X" / "zarr.json").write_text("{ not json")
    assert _one(setup).state == "corrupt"


def test_an_interrupted_extraction_is_reported(setup):
    root, params, manifest, path = setup
    extract(
        path, [r.sha256 for r in manifest] + [sha(f"n{i}") for i in range(6)], identity=_identity(params), stop_after=1
    )
    report = _one(setup)
    assert report.state == "incomplete" and "interrupted" in report.problems[0]


@pytest.mark.parametrize(
    "change, culprit",
    [
        ({"cut": "block_3_add"}, "cut: store has 'block_3_add', params say 'block_2_add'"),
        ({"input_size": 48}, "input_size: store has 48, params say 32"),
        ({"dtype": "float32"}, "dtype: store has 'float32', params say 'float16'"),
        ({"weights": "imagenet"}, "weights: store has 'imagenet', params say 'none'"),
    ],
)
def test_an_identity_that_differs_from_params_is_stale(setup, change, culprit):
    root, params, manifest, path = setup
    extract(path, [r.sha256 for r in manifest], identity=_identity(params, **change))
    report = _one(setup)
    assert report.state == "stale" and culprit in report.problems


def test_a_store_lacking_images_of_the_manifest_is_stale_and_extra_rows_are_noted(setup):
    root, params, manifest, path = setup
    bigger = records({**NAMES, "train": NAMES["train"] + ["n0"]})
    write_manifest([r for r in bigger if r.id != "test/s0.png"], root / "data" / "manifest.csv")
    report = _one(setup)
    assert report.state == "stale"
    assert "1 image(s) of the current manifest have no row; `dvc repro` extracts them" in report.problems
    assert report.notes == ("1 row(s) of images no longer in the dataset (`shoulders gc` removes them)",)


def test_a_store_without_a_feature_set_is_an_orphan(setup):
    root, params, manifest, _ = setup
    extract(store_path(root / "features", "old"), [r.sha256 for r in manifest], identity=_identity(params))
    (report,) = [r for r in _verify(setup) if r.key == "old"]
    assert report.state == "orphan"


def test_folder_report_lists_partials_leftovers_and_missing(setup):
    root, params, manifest, path = setup
    extract(path, [r.sha256 for r in manifest], identity=_identity(params, cut="block_3_add"), stop_after=1)
    (root / "features" / "mv2.zarr.0123abcd.old").mkdir()
    params2 = parse_params(
        tiny_params(
            "images",
            features={
                "mv2": {"backbone": "mobilenet_v2", "weights": "none", "cut": CUT, "size": 32, "alpha": 0.35},
                "later": {"backbone": "mobilenet_v2", "weights": "none", "cut": CUT, "size": 32, "alpha": 0.35},
            },
        )
    )
    reports = verify_features(
        root / "features", params2, root / "data" / "manifest.csv", checks=root / "reports/checks"
    )
    states = {(r.key, r.state) for r in reports}
    assert ("mv2", "ok") in states and ("mv2", "partial") in states and ("mv2", "leftover") in states
    assert ("later", "missing") in states
    assert not any(r.failing for r in reports if r.key != "mv2" or r.state != "ok")


def test_cli_exit_status(setup, capsys, monkeypatch):
    from conftest import write_params

    root, params, manifest, path = setup
    monkeypatch.chdir(root)
    write_params(root / "params.yaml", tiny_params("images"))
    cli.main(["verify"])
    assert "none failing" in capsys.readouterr().out
    _chunk(path, 0).unlink()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify"])
    assert exit_.value.code == 1 and "corrupt" in capsys.readouterr().out


def test_gc_from_the_command_line_removes_rows_of_images_no_longer_in_the_manifest(setup, capsys, monkeypatch):
    from conftest import write_params

    root, params, manifest, path = setup
    monkeypatch.chdir(root)
    write_params(root / "params.yaml", tiny_params("images"))
    kept = [r for r in manifest if r.id != "train/t0.png"]
    before = open_feature_set(path, "test", manifest=kept, pooling="none").X
    write_manifest(kept, root / "data" / "manifest.csv")
    cli.main(["gc", "--dry-run"])
    assert "1 of images no longer in data/manifest.csv would be removed" in capsys.readouterr().out
    cli.main(["gc"])
    assert "1 of images no longer in data/manifest.csv removed" in capsys.readouterr().out
    np.testing.assert_array_equal(open_feature_set(path, "test", manifest=kept, pooling="none").X, before)
    assert _one(setup).state == "ok" and _one(setup).notes == ()


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


def test_disk_full_while_adding_rows_keeps_every_verified_row(setup, disk):
    root, params, manifest, path = setup
    before = open_feature_set(path, "train", manifest=manifest, pooling="none").X
    more = [r.sha256 for r in manifest] + [sha(f"n{i}") for i in range(9)]
    disk.update(left=3, under="mv2.zarr/X")  # a chunk or two fit, then the disk is full
    with pytest.raises(OSError) as error:
        extract(path, more, identity=_identity(params))
    assert error.value.errno == errno.ENOSPC
    np.testing.assert_array_equal(open_feature_set(path, "train", manifest=manifest, pooling="none").X, before)
    assert _one(setup).state == "incomplete"
    # Space freed: the next run resumes, and every old row is still as it was.
    disk.update(left=None)
    extract(path, more, identity=_identity(params))
    np.testing.assert_array_equal(open_feature_set(path, "train", manifest=manifest, pooling="none").X, before)
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["rows"] == 26
    row = group["sha256"][:26].tolist().index(sha("n8"))
    np.testing.assert_array_equal(np.asarray(group["X"][row], np.float32), features_of(sha("n8")).astype(np.float16))


def test_disk_full_while_building_a_new_identity_keeps_the_previous_store(setup, disk):
    root, params, manifest, path = setup
    before = open_feature_set(path, "val", manifest=manifest, pooling="none").X
    disk.update(left=5, under=".incomplete")
    with pytest.raises(OSError, match="No space left on device"):
        extract(path, [r.sha256 for r in manifest], identity=_identity(params, cut="block_3_add"))
    np.testing.assert_array_equal(open_feature_set(path, "val", manifest=manifest, pooling="none").X, before)
    assert _one(setup).state == "ok"
    assert CHUNK == 4 and SHAPE == (3, 3, 4)


# --------------------------------------------------------------------------- views stores prove their rows too


@pytest.fixture
def views_store(setup):
    root, params, manifest, _ = setup
    path = root / "features" / "views" / "mv2.zarr"
    train = [r.sha256 for r in manifest if r.split == "train"]
    extract(path, train, identity=_identity(params, augment={"seed": 0}), views=2, view_offset=10.0)
    return path, manifest


def _view_chunk(path, chunk, view):
    return path / "X" / "c" / str(chunk) / str(view) / "0" / "0" / "0"


def _damage(path, how):
    if how == "missing":
        _view_chunk(path, 1, 1).unlink()
    elif how == "corrupt":
        chunk = _view_chunk(path, 1, 1)
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:  # two views of one chunk swapped: each file is whole, only its position is wrong
        a, b = _view_chunk(path, 1, 0), _view_chunk(path, 1, 1)
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)


@pytest.mark.parametrize(
    "how, problem, refused",
    [
        ("missing", "chunk 1 of view 1 is missing on disk", r"views/mv2.zarr: chunk 1 of view 1 is missing on disk"),
        ("corrupt", "chunk 1 of view 1 is corrupt", r"views/mv2.zarr: chunk 1 of view 1 is corrupt"),
        (
            "swapped",
            "chunk 1 of view 0 (rows 4-7) does not match its recorded digest",
            r"views/mv2.zarr: chunk 1 of view 0 does not match its recorded digest",
        ),
    ],
)
def test_a_damaged_views_store_is_refused_by_verify_and_by_open_views_naming_store_and_chunk(
    views_store, how, problem, refused
):
    from pipeline.store.layout import StoreError
    from pipeline.store.reader import open_views

    path, manifest = views_store
    np.testing.assert_array_equal(open_views(path, "train", manifest=manifest).X.shape, (10, 2, 4))
    _damage(path, how)
    report = verify_store(path, key="views/mv2")
    assert report.state == "corrupt" and any(p.startswith(problem) for p in report.problems), report.problems
    with pytest.raises(StoreError, match=refused):
        open_views(path, "train", manifest=manifest)
