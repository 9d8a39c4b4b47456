"""Damage is repaired, not only detected: extraction recomputes exactly the rows of chunks that fail their digests."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import yaml
import zarr
from conftest import tiny_params, write_image_folder, write_params
from test_store import CHUNK, IDENTITY, NAMES, extract, records, sha

from pipeline.store.layout import StoreError, chunk_file, store_path
from pipeline.store.verify import verify_store

# 17 rows in chunks of 4: chunks 0-3 are whole, chunk 4 holds one row (the partial last chunk).
ROWS = 17


def _file(path, chunk, view=None):
    return chunk_file(path, zarr.open_group(str(path), mode="r")["X"], "X", chunk, view)


def _flip(path, chunk, view=None):
    file = _file(path, chunk, view)
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _swap(path, a, b, view_a=None, view_b=None):
    file_a, file_b = _file(path, a, view_a), _file(path, b, view_b)
    data_a, data_b = file_a.read_bytes(), file_b.read_bytes()
    file_a.write_bytes(data_b)
    file_b.write_bytes(data_a)


def _change(path, row):
    X = zarr.open_group(str(path), mode="r+")["X"]
    X[row] = np.asarray(X[row]) + 1  # re-encoded validly: only the digest tells


DAMAGE = {
    "missing": (lambda p: _file(p, 1).unlink(), [1]),
    "swapped": (lambda p: _swap(p, 0, 3), [0, 3]),
    "flipped byte": (lambda p: _flip(p, 2), [2]),
    "changed": (lambda p: _change(p, 9), [2]),
    "partial last chunk": (lambda p: _flip(p, 4), [4]),
}


def _state(path) -> str:
    """What `shoulders verify` says of the store (compared with its own identity: damage is what is asked)."""
    return verify_store(path, expected=dict(zarr.open_group(str(path), mode="r").attrs["identity"])).state


def _stamps(path) -> dict[str, tuple[int, int]]:
    root = path / "X" / "c"
    return {
        f.relative_to(root).as_posix(): (f.stat().st_ino, f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file()
    }


@pytest.fixture
def stores(tmp_path):
    """The same rows in two stores: one to damage, one to compare with."""
    wanted = [r.sha256 for r in records(NAMES)]
    path, cold = store_path(tmp_path / "features", "mv2"), store_path(tmp_path / "cold", "mv2")
    for store in (path, cold):
        extract(store, wanted)
    return path, cold, wanted


def _same(path, cold):
    a, b = zarr.open_group(str(path), mode="r"), zarr.open_group(str(cold), mode="r")
    np.testing.assert_array_equal(a["X"][...], b["X"][...])
    np.testing.assert_array_equal(a["sha256"][...], b["sha256"][...])
    assert a.attrs["chunk_digests"] == b.attrs["chunk_digests"] and a.attrs["rows"] == b.attrs["rows"]
    assert a.attrs["pending"] is None


@pytest.mark.parametrize("how", list(DAMAGE))
def test_the_rows_of_damaged_chunks_and_only_they_are_recomputed(stores, how, caplog):
    path, cold, wanted = stores
    damage, chunks = DAMAGE[how]
    damage(path)
    assert _state(path) == "corrupt"
    before = _stamps(path)
    caplog.set_level(logging.INFO, logger="pipeline.store.writer")
    _, writes, counts = extract(path, wanted)
    rows = sum(min(ROWS, (c + 1) * CHUNK) - c * CHUNK for c in chunks)
    assert [w.chunk for w in writes] == chunks and all(w.rows.start == w.chunk * CHUNK for w in writes)
    assert counts == {"images": ROWS, "reused": ROWS - rows, "computed": rows, "repaired": rows}
    [line] = [r.getMessage() for r in caplog.records if "digest" in r.getMessage()]
    assert line.startswith(f"{path}: chunk{'s' if len(chunks) > 1 else ''} {', '.join(map(str, chunks))} fail")
    assert line.endswith(f"recomputing {rows} row(s)")
    assert _state(path) == "ok"
    _same(path, cold)
    after = _stamps(path)
    untouched = {f"{c}/0/0/0" for c in range(5)} - {f"{c}/0/0/0" for c in chunks}
    assert all(after[key] == before[key] for key in untouched)  # every sound chunk kept as it was
    assert zarr.open_group(str(path), mode="r").attrs["runs"][-1]["repaired_chunks"] == [[c, None] for c in chunks]


def test_a_damaged_last_chunk_is_repaired_while_new_rows_are_appended_to_it(stores):
    # The append rewrites the partial last chunk; its old row must be recomputed, not carried over (and not blessed
    # with a new digest: finalising digests what it reads back).
    path, cold, wanted = stores
    _change(path, 16)
    more = wanted + [sha(f"n{i}") for i in range(3)]
    _, writes, counts = extract(path, more)
    assert writes[0].chunk == 4 and writes[0].rows == range(16, 20)
    assert (counts["computed"], counts["repaired"], counts["reused"]) == (4, 1, 16)
    extract(cold, more)
    assert _state(path) == "ok"
    _same(path, cold)


def test_a_killed_repair_resumes_and_ends_as_a_sound_store(stores):
    path, cold, wanted = stores
    _file(path, 0).unlink()
    _flip(path, 3)
    extract(path, wanted, stop_after=1)  # chunk 0 written again, then killed
    assert zarr.open_group(str(path), mode="r").attrs["pending"]["repair"] == [[0, None], [3, None]]
    _, writes, counts = extract(path, wanted)
    assert [w.chunk for w in writes] == [3] and counts["computed"] == counts["repaired"] == CHUNK
    assert _state(path) == "ok"
    _same(path, cold)


@pytest.mark.parametrize("how", ["missing", "swapped views", "flipped byte"])
def test_damaged_views_are_recomputed_view_by_view(tmp_path, how, caplog):
    train = [r.sha256 for r in records(NAMES) if r.split == "train"]
    path, cold = tmp_path / "views" / "mv2.zarr", tmp_path / "cold" / "mv2.zarr"
    identity = {**IDENTITY, "augment": {"seed": 0}}
    for store in (path, cold):
        extract(store, train, identity=identity, views=2, view_offset=10.0)
    if how == "missing":
        _file(path, 1, 1).unlink()
    elif how == "swapped views":
        _swap(path, 1, 1, 0, 1)
    else:
        _flip(path, 2, 0)
    caplog.set_level(logging.INFO, logger="pipeline.store.writer")
    _, writes, counts = extract(path, train, identity=identity, views=2, view_offset=10.0)
    expected, named, passes = {
        "missing": ([(1, 1)], "chunk 1 (view 1) fails its digest", 4),
        "swapped views": ([(1, 0), (1, 1)], "chunk 1 (views 0, 1) fail their digests", 8),
        "flipped byte": ([(2, 0)], "chunk 2 (view 0) fails its digest", 2),
    }[how]
    assert [(w.chunk, w.view) for w in writes] == expected
    assert counts["computed"] == counts["repaired"] == passes
    [line] = [r.getMessage() for r in caplog.records if "digest" in r.getMessage()]
    assert line == f"{path}: {named} (missing, corrupt, changed or swapped): recomputing {passes} image view(s)"
    assert _state(path) == "ok"
    _same(path, cold)


def test_a_damaged_row_index_cannot_be_repaired_row_by_row_and_says_what_to_do(stores):
    path, _, wanted = stores
    (path / "sha256" / "c" / "0").unlink()  # every row would read as '' : no row names its image any more
    report = verify_store(path)
    assert (
        report.state == "corrupt"
        and "sha256: 17 row(s) hold no content hash (the row index is damaged)" in report.problems
    )
    with pytest.raises(StoreError) as error:
        extract(path, wanted)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path} cannot be repaired row by row (")
    assert f"`dvc checkout {path}`" in message and "`dvc repro` extracts every image again" in message
    assert zarr.open_group(str(path), mode="r").attrs["pending"] is None  # nothing was touched


def test_an_unreadable_array_is_one_line_naming_the_store(stores):
    path, _, wanted = stores
    (path / "X" / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreError, match=r"cannot be repaired row by row \(an array does not read \(JSONDecodeError"):
        extract(path, wanted)


def test_a_store_whose_own_attributes_are_unreadable_is_rebuilt_beside_it_and_said_so(stores, caplog):
    # Without its attributes nothing tells which rows a chunk holds or what made them: the store is extracted
    # again as a new one (the damaged one stays until the new one replaces it).
    path, cold, wanted = stores
    (path / "zarr.json").write_text("{ not json")
    caplog.set_level(logging.WARNING, logger="pipeline.store.writer")
    _, writes, counts = extract(path, wanted)
    assert counts["computed"] == ROWS and f"{path} is not a readable store of format 2" in caplog.text
    assert _state(path) == "ok"
    _same(path, cold)


# --------------------------------------------------------------------------- the stages, with a real backbone


@pytest.fixture
def extracted(in_tmp):
    from pipeline.stages import extract as stage
    from pipeline.stages import prepare

    write_image_folder(in_tmp / "images", classes=3, per_class=6)
    write_params(in_tmp / "params.yaml", tiny_params("images", extract={"batch_size": 4, "chunk_mb": 0.004}))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    args = [
        "--feature-set",
        "mv2",
        "--out",
        "features/mv2.zarr",
        "--report",
        "reports/extract/mv2.json",
        "--no-progress",
    ]
    stage.main(args)
    shutil.copytree(in_tmp / "features" / "mv2.zarr", in_tmp / "fresh.zarr")
    return in_tmp, args


def test_the_extract_stage_repairs_a_damaged_store_to_what_a_fresh_extraction_gives(extracted, caplog):
    from pipeline.stages import extract as stage

    root, args = extracted
    path = root / "features" / "mv2.zarr"
    assert zarr.open_group(str(path), mode="r").attrs["chunk_rows"] == 4 and _stamps(path)["4/0/0/0"]
    _swap(path, 0, 3)
    _file(path, 1).unlink()
    before = _stamps(path)
    caplog.set_level(logging.INFO)
    stage.main(args)
    [line] = [r.getMessage() for r in caplog.records if "fail their digests" in r.getMessage()]
    assert line == (
        "features/mv2.zarr: chunks 0, 1, 3 fail their digests (missing, corrupt, changed or swapped): "
        "recomputing 12 row(s)"
    )
    report = json.loads((root / "reports/extract/mv2.json").read_text())
    assert (report["images"], report["reused"], report["computed"], report["repaired"]) == (18, 6, 12, 12)
    assert _state(path) == "ok"
    _same(path, root / "fresh.zarr")  # bit for bit what the backbone gave the first time
    after = _stamps(path)
    assert after["2/0/0/0"] == before["2/0/0/0"] and after["4/0/0/0"] == before["4/0/0/0"]
    # Sound now: the next run finds nothing to do.
    caplog.clear()
    stage.main(args)
    assert json.loads((root / "reports/extract/mv2.json").read_text())["computed"] == 0


def test_a_damaged_chunk_holding_rows_of_images_gone_from_the_dataset_is_refused_before_any_backbone(extracted):
    from pipeline.manifest import read_manifest
    from pipeline.stages import extract as stage
    from pipeline.stages import prepare

    root, args = extracted
    path = root / "features" / "mv2.zarr"
    gone = next(r for r in read_manifest(root / "data/manifest.csv") if r.path.endswith("class_0/img_000.png"))
    (root / "images" / "class_0" / "img_000.png").unlink()
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    row = zarr.open_group(str(path), mode="r")["sha256"][...].tolist().index(gone.sha256)
    _file(path, row // 4).unlink()
    with pytest.raises(StoreError) as error:
        stage.main(args)
    assert str(error.value) == (
        f"features/mv2.zarr: chunk {row // 4} fails its digest, and 1 row(s) in it are of images no longer in the "
        "dataset, whose features cannot be recomputed without their files: put those images back, restore the store "
        "(`dvc checkout features/mv2.zarr`), or delete it (`dvc repro` then extracts every image again)"
    )
    assert zarr.open_group(str(path), mode="r").attrs["pending"] is None


def test_the_stage_never_ends_successfully_on_a_store_that_does_not_verify(in_tmp, monkeypatch):
    from pipeline.stages import extract as stage
    from pipeline.stages import prepare
    from pipeline.store.writer import StoreWriter

    write_image_folder(in_tmp / "images", classes=2, per_class=6)
    write_params(in_tmp / "params.yaml", tiny_params("images", extract={"batch_size": 4, "chunk_mb": 0.004}))
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    finalize = StoreWriter.finalize

    def finalize_then_lose_a_chunk(self, run=None):  # a disk or another tool damages the store meanwhile
        out = finalize(self, run)
        _flip(out, 1)
        return out

    monkeypatch.setattr(StoreWriter, "finalize", finalize_then_lose_a_chunk)
    with pytest.raises(
        StoreError,
        match=r"features/mv2.zarr does not verify after this extraction \(chunk 1 is "
        r"corrupt .*DVC records nothing of a failed stage",
    ):
        stage.main(["--feature-set", "mv2", "--out", "features/mv2.zarr", "--no-progress"])


def test_the_augment_stage_repairs_damaged_views(in_tmp, caplog):
    from pipeline.stages import augment, prepare

    write_image_folder(in_tmp / "images", classes=2, per_class=8)
    write_params(
        in_tmp / "params.yaml",
        tiny_params(
            "images",
            extract={
                "batch_size": 4,
                "chunk_mb": 0.004,
                "augment": {"views": 2, "seed": 7, "ops": {"flip": "horizontal"}},
            },
        ),
    )
    prepare.main(["--manifest", "data/manifest.csv", "--report", "r.json", "--no-progress"])
    args = ["--feature-set", "mv2", "--out", "features/views/mv2.zarr", "--report", "views.json", "--no-progress"]
    augment.main(args)
    path = in_tmp / "features" / "views" / "mv2.zarr"
    shutil.copytree(path, in_tmp / "fresh.zarr")
    _swap(path, 0, 0, 0, 1)
    caplog.set_level(logging.INFO)
    augment.main(args)
    assert (
        "features/views/mv2.zarr: chunk 0 (views 0, 1) fail their digests (missing, corrupt, changed or swapped): "
        "recomputing 8 image view(s)" in [r.getMessage() for r in caplog.records]
    )
    assert json.loads((in_tmp / "views.json").read_text())["repaired"] == 8
    assert _state(path) == "ok"
    _same(path, in_tmp / "fresh.zarr")


# --------------------------------------------------------------------------- in a real `dvc repro`


@pytest.mark.slow
def test_dvc_repro_repairs_a_damaged_store_and_a_forced_run_records_only_a_sound_one(tmp_path):
    import sys

    from test_incremental import _ran, _repo, _run

    root, env = _repo(tmp_path)
    _run(["dvc", "repro", "heads"], root, env)
    path = root / "features" / "mv2.zarr"
    _swap(path, 0, 1)
    # Before: extract reported "30 reused, 0 computed", heads failed on the swapped chunks, and every repro looped.
    out = _run(["dvc", "repro", "heads"], root, env)
    assert {"extract@mv2", "heads"} <= _ran(out)
    assert "features/mv2.zarr: chunks 0, 1 fail their digests" in out
    assert "`dvc repro`" not in _run([sys.executable, "-m", "pipeline", "verify"], root, env)  # exits 0: none failing
    assert "up to date" in _run(["dvc", "status", "heads"], root, env)

    # A forced run of the stage alone repairs too, and so records a store that verifies.
    _file(path, 2).unlink()
    out = _run(["dvc", "repro", "-f", "-s", "extract@mv2"], root, env)
    assert "features/mv2.zarr: chunk 2 fails its digest" in out
    assert _state(path) == "ok"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert any(o["path"] == "features/mv2.zarr" for o in lock["stages"]["extract@mv2"]["outs"])
    assert "up to date" in _run(["dvc", "status", "extract@mv2"], root, env)  # dvc.lock holds what is on disk
