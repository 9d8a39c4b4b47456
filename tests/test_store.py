"""The feature store: rows keyed by image content, appended, resumed, proven by digests, joined from the manifest."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import zarr

from pipeline.config import POOLINGS
from pipeline.manifest import Record
from pipeline.store import pooling
from pipeline.store.contents import rows_missing
from pipeline.store.gc import collect_garbage
from pipeline.store.layout import INCOMPLETE_DIR, StoreError, rows_per_chunk, store_path
from pipeline.store.reader import list_feature_sets, open_feature_set, open_store, open_views, read_pooled
from pipeline.store.writer import StoreWriter

SHAPE = (3, 3, 4)
IDENTITY = {"backbone": "mobilenet_v2", "weights": "none", "cut": "block_2_add", "dtype": "float16"}
CHUNK = 4


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def features_of(h: str) -> np.ndarray:
    """What a backbone would compute for the image of hash ``h``: a function of its bytes only."""
    rng = np.random.default_rng(int(h[:8], 16))
    return rng.normal(size=SHAPE).astype(np.float32)


def records(names_by_split: dict[str, list[str]], *, labels=None) -> list[Record]:
    out = []
    for split, names in names_by_split.items():
        for name in names:
            label = (labels or {}).get(name, int(name[-1]) % 2)
            out.append(
                Record(
                    id=f"{split}/{name}.png",
                    path=f"img/{name}.png",
                    label=label,
                    class_name="ab"[label],
                    split=split,
                    sha256=sha(name),
                    width=8,
                    height=8,
                )
            )
    return out


def extract(path, wanted, *, identity=IDENTITY, stop_after=None, views=None, view_offset=0.0):
    """Plan and write rows as an extraction does; ``stop_after`` chunks simulates a kill."""
    writer = StoreWriter(
        path, identity, {"note": "test"}, feature_shape=SHAPE, dtype="float16", chunk_rows=CHUNK, views=views
    )
    with writer:  # leaving it (a kill, an error) releases the lock, as a dead process's is released
        writes, counts = writer.plan(wanted)
        hashes = writer.row_hashes()
        for index, write in enumerate(writes):
            if stop_after is not None and index == stop_after:
                return writer, writes, counts
            block = np.stack([features_of(hashes[i]) + (write.view or 0) * view_offset for i in write.rows])
            writer.write(write, block)
        writer.finalize({"runtime": "test"})
    return writer, writes, counts


NAMES = {"train": [f"t{i}" for i in range(10)], "val": [f"v{i}" for i in range(3)], "test": [f"s{i}" for i in range(4)]}


@pytest.fixture
def store(tmp_path):
    manifest = records(NAMES)
    path = store_path(tmp_path / "features", "mv2")
    extract(path, [r.sha256 for r in manifest])
    return path, manifest


def test_rows_are_joined_from_the_manifest_in_its_order(store):
    path, manifest = store
    train = open_feature_set(path, "train", manifest=manifest, pooling="none")
    want = [r for r in manifest if r.split == "train"]
    assert train.ids.tolist() == [r.id for r in want] and train.y.tolist() == [r.label for r in want]
    assert train.classes == ("a", "b") and list(train.sha256) == [r.sha256 for r in want]
    np.testing.assert_array_equal(train.X, np.stack([features_of(r.sha256) for r in want]).astype(np.float16))
    assert open_store(path).attrs["rows"] == 17 and train.provenance["cut"] == "block_2_add"


def test_relabelling_and_resplitting_read_the_same_rows_differently(store):
    path, manifest = store
    moved = records(
        {"train": NAMES["train"][2:], "val": NAMES["val"] + NAMES["train"][:2], "test": NAMES["test"]}, labels={"t3": 0}
    )
    val = open_feature_set(path, "val", manifest=moved, pooling="avg")
    assert val.ids.tolist()[-2:] == ["val/t0.png", "val/t1.png"]
    np.testing.assert_allclose(val.X[-1], features_of(sha("t1")).astype(np.float16).astype(np.float32).mean((0, 1)))
    train = open_feature_set(path, "train", manifest=moved, pooling="avg")
    assert train.y[train.ids.tolist().index("train/t3.png")] == 0


@pytest.mark.parametrize("name, width", [("avg", 4), ("max", 4), ("avgmax", 8), ("flatten", 36)])
def test_pooling_shapes_and_values(store, name, width):
    path, manifest = store
    X = open_feature_set(path, "test", manifest=manifest, pooling=name).X
    maps = np.stack([features_of(r.sha256) for r in manifest if r.split == "test"]).astype(np.float16)
    assert X.shape == (4, width) and X.dtype == np.float32
    np.testing.assert_allclose(X, pooling.pool(maps.astype(np.float32), name), rtol=1e-6)


def test_several_splits_and_poolings_read_each_chunk_once_and_equal_one_read_each(store, monkeypatch):
    from pipeline.store import reader

    path, manifest = store
    calls = []
    counted = reader.read_chunk
    monkeypatch.setattr(reader, "read_chunk", lambda *a, **k: calls.append(a[2]) or counted(*a, **k))
    both = read_pooled(path, ("train", "val"), poolings=("avg", "avgmax", "none"), manifest=manifest)
    index = reader.row_index(open_store(path))
    holding = {index[r.sha256] // CHUNK for r in manifest if r.split in ("train", "val")}
    assert sorted(calls) == sorted(holding) and len(holding) > 1  # each once, though train and val share one
    for split in ("train", "val"):
        for name in ("avg", "avgmax", "none"):
            alone = open_feature_set(path, split, manifest=manifest, pooling=name)
            np.testing.assert_array_equal(both[split][name].X, alone.X)
            assert both[split][name].ids.tolist() == alone.ids.tolist()
    empty = read_pooled(path, ("val",), poolings=("avg",), manifest=records({"train": NAMES["train"]}))
    assert empty["val"]["avg"].X.shape == (0, 4)


def test_every_pooling_name_has_one_implementation():
    assert set(pooling._POOLERS) == set(POOLINGS)
    with pytest.raises(ValueError, match=r"pooling must be one of \['none', 'avg', 'max', 'flatten', 'avgmax', 'cls'"):
        pooling.pool(np.zeros((1, 2, 2, 3)), "median")


def test_token_poolings_read_summaries_and_maps_refuse_them():
    # A token summary per image: [class token, mean of the patch tokens] (pipeline.backbones.hub.TokenSummary).
    summary = np.random.default_rng(0).normal(size=(5, 2, 6)).astype(np.float16)
    np.testing.assert_array_equal(pooling.pool(summary, "cls"), summary[:, 0].astype(np.float32))
    np.testing.assert_array_equal(pooling.pool(summary, "mean"), summary[:, 1].astype(np.float32))
    np.testing.assert_array_equal(
        pooling.pool(summary, "cls+mean"), np.concatenate([summary[:, 0], summary[:, 1]], axis=1).astype(np.float32)
    )
    assert [pooling.pooled_width((2, 6), p) for p in ("cls", "mean", "cls+mean")] == [6, 6, 12]
    with pytest.raises(ValueError, match=r"'avg' does not apply to rows of shape \(2, 6\) \(a token summary\)"):
        pooling.pool(summary, "avg")
    with pytest.raises(ValueError, match=r"'cls' does not apply to rows of shape \(4, 4, 6\) \(a map\)"):
        pooling.pool(np.zeros((1, 4, 4, 6)), "cls")
    no_class_token = summary[:, 1:]  # SigLIP-like: the patch mean alone
    np.testing.assert_array_equal(pooling.pool(no_class_token, "mean"), summary[:, 1].astype(np.float32))
    with pytest.raises(ValueError, match=r"the poolings that do: \['mean'\]"):
        pooling.pool(no_class_token, "cls")
    assert pooling.applicable((6,)) == POOLINGS  # a vector is returned as it is by every pooling


@pytest.mark.parametrize("name", POOLINGS)
def test_the_exported_models_pooling_layers_pool_as_the_store_does(name):
    import keras

    from pipeline.export.layers import _POOLING_LAYERS, apply_pooling

    assert set(_POOLING_LAYERS) == set(POOLINGS)
    shape = (2, 6) if name in ("cls", "mean", "cls+mean") else (3, 4, 6)
    rows = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, apply_pooling(inputs, name))
    np.testing.assert_allclose(model.predict(rows, verbose=0), pooling.pool(rows, name), rtol=1e-6, atol=1e-6)


def test_two_files_with_the_same_bytes_are_one_row(tmp_path):
    manifest = records({"train": ["t0", "t1"], "val": ["v0"], "test": ["s0"]})
    twin = Record(
        id="train/copy.png",
        path="img/copy.png",
        label=1,
        class_name="b",
        split="train",
        sha256=sha("t0"),
        width=8,
        height=8,
    )
    path = store_path(tmp_path, "x")
    _, _, counts = extract(path, [r.sha256 for r in manifest + [twin]])
    assert counts == {"images": 4, "reused": 0, "computed": 4, "repaired": 0} and open_store(path).attrs["rows"] == 4
    train = open_feature_set(path, "train", manifest=manifest + [twin], pooling="none")
    np.testing.assert_array_equal(train.X[0], train.X[2])
    assert train.y.tolist() == [0, 1, 1]


def test_adding_images_computes_only_them_and_keeps_every_old_row(store):
    path, manifest = store
    before = np.asarray(zarr.open_group(str(path), mode="r")["X"][...])
    more = records({**NAMES, "train": NAMES["train"] + ["n0", "n1", "n2"]})
    _, writes, counts = extract(path, [r.sha256 for r in more])
    assert counts == {"images": 20, "reused": 17, "computed": 3, "repaired": 0}
    assert sum(len(w.rows) for w in writes) == 3 and writes[0].rows.start == 17
    after = np.asarray(zarr.open_group(str(path), mode="r")["X"][...])
    np.testing.assert_array_equal(after[:17], before)  # bit for bit, the boundary chunk included
    assert len(open_store(path).attrs["runs"]) == 2
    again = extract(path, [r.sha256 for r in more])[2]
    assert again == {"images": 20, "reused": 20, "computed": 0, "repaired": 0}
    assert rows_missing(path, IDENTITY, [r.sha256 for r in more]) == 0


def test_rows_of_removed_images_stay_until_gc_which_keeps_the_rest_bit_identical(store):
    path, manifest = store
    fewer = [r for r in manifest if r.id not in ("train/t3.png", "test/s1.png")]
    assert rows_missing(path, IDENTITY, [r.sha256 for r in fewer]) == 0  # nothing to compute, nothing lost
    before = open_feature_set(path, "train", manifest=fewer, pooling="none").X
    assert collect_garbage(path, {r.sha256 for r in fewer}, dry_run=True).removed == 2
    assert open_store(path).attrs["rows"] == 17
    done = collect_garbage(path, {r.sha256 for r in fewer})
    assert (done.rows_before, done.rows_after) == (17, 15)
    group = open_store(path)
    assert sha("t3") not in group["sha256"][:15].tolist()
    np.testing.assert_array_equal(open_feature_set(path, "train", manifest=fewer, pooling="none").X, before)
    with pytest.raises(StoreError, match=r"no features for 1 image\(s\) of the manifest \(first: train/t3.png"):
        open_feature_set(path, "train", manifest=manifest)


def test_a_killed_append_resumes_from_its_last_written_chunk(tmp_path):
    manifest = records(NAMES)
    path = store_path(tmp_path, "mv2")
    extract(path, [r.sha256 for r in manifest[:6]])
    writer, writes, _ = extract(path, [r.sha256 for r in manifest], stop_after=2)
    assert open_store(path).attrs["pending"] is not None and open_store(path).attrs["rows"] == 6
    # Readers see the verified rows only, meanwhile.
    assert rows_missing(path, IDENTITY, [r.sha256 for r in manifest]) is None
    resumed, rest, counts = extract(path, [r.sha256 for r in manifest])
    assert [w.chunk for w in rest] == [w.chunk for w in writes[2:]]
    cold = store_path(tmp_path / "cold", "mv2")
    extract(cold, [r.sha256 for r in manifest[:6]])
    extract(cold, [r.sha256 for r in manifest])
    np.testing.assert_array_equal(zarr.open_group(str(path))["X"][...], zarr.open_group(str(cold))["X"][...])


def test_an_interrupted_append_of_other_images_is_dropped(tmp_path):
    manifest = records(NAMES)
    path = store_path(tmp_path, "mv2")
    extract(path, [r.sha256 for r in manifest[:6]])
    extract(path, [r.sha256 for r in manifest], stop_after=1)
    _, writes, counts = extract(path, [r.sha256 for r in manifest[:8]])
    assert counts["computed"] == 2 and open_store(path).attrs["rows"] == 8
    assert open_feature_set(path, "train", manifest=manifest[:8], pooling="none").X.shape == (8, *SHAPE)


def test_another_identity_builds_a_new_store_and_keeps_the_old_until_done(store):
    path, manifest = store
    other = {**IDENTITY, "cut": "block_3_add"}
    writer, _, _ = extract(path, [r.sha256 for r in manifest], identity=other, stop_after=1)
    assert INCOMPLETE_DIR in str(writer.path)
    assert open_store(path).attrs["identity"] == IDENTITY  # the old store is whole and readable
    open_feature_set(path, "train", manifest=manifest)
    extract(path, [r.sha256 for r in manifest], identity=other)
    assert open_store(path).attrs["identity"] == other and not writer.path.exists()
    with pytest.raises(StoreError, match="another identity: cut: store has 'block_3_add', expected 'block_2_add'"):
        open_feature_set(path, "train", manifest=manifest, expect={"cut": "block_2_add"})


def test_non_finite_features_are_refused_when_finalising(tmp_path):
    writer = StoreWriter(tmp_path / "x.zarr", IDENTITY, {}, feature_shape=SHAPE, dtype="float16", chunk_rows=CHUNK)
    writes, _ = writer.plan([sha("a"), sha("b")])
    block = np.zeros((2, *SHAPE), np.float32)
    block[1, 0, 0, 0] = np.nan
    writer.write(writes[0], block)
    with pytest.raises(StoreError, match=r"chunk 0: 1 row\(s\) contain NaN or Inf"):
        writer.finalize()
    # A new store is built aside and swapped in only once proven: nothing is there for readers.
    assert INCOMPLETE_DIR in str(writer.path) and not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_non_finite_value_is_found_in_either_storage_dtype(dtype, bad):
    from pipeline.store.integrity import check_finite

    block = np.zeros((4, 3, 5), dtype)
    block[0] = 65504.0  # float16's largest finite value, all ones but one exponent bit
    block[1] = -np.finfo(dtype).tiny / 2  # subnormal
    check_finite(block, "ok")
    block[2, 1, 4] = block[3, 0, 1] = bad
    with pytest.raises(StoreError, match=r"bad: 2 row\(s\) contain NaN or Inf"):
        check_finite(block, "bad")
    with pytest.raises(StoreError, match=r"strided: 1 row\(s\)"):
        check_finite(block[::2, :, ::2], "strided")  # rows 0 and 2: row 2 has its bad value, row 3 is skipped


def _chunk_file(path, chunk):
    return path / "X" / "c" / str(chunk) / "0" / "0" / "0"


def test_a_missing_chunk_is_refused_on_read_with_store_and_chunk_named(store):
    path, manifest = store
    _chunk_file(path, 1).unlink()
    with pytest.raises(StoreError, match=r"mv2.zarr: chunk 1 is missing on disk"):
        open_feature_set(path, "train", manifest=manifest)


def test_a_corrupt_chunk_is_refused_on_read_with_store_and_chunk_named(store):
    path, manifest = store
    chunk = _chunk_file(path, 2)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"mv2.zarr: chunk 2 is corrupt"):
        open_feature_set(path, "train", manifest=manifest)


def test_swapped_chunks_are_refused_on_read(store):
    path, manifest = store
    a, b = _chunk_file(path, 0), _chunk_file(path, 1)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(StoreError, match=r"chunk 0 does not match its recorded digest"):
        open_feature_set(path, "train", manifest=manifest)
    with pytest.raises(StoreError, match=r"does not match its recorded digest"):
        open_feature_set(path, "train", manifest=manifest, as_dask=True).X.compute()


def test_dask_reads_are_lazy_and_equal_the_eager_ones(store):
    path, manifest = store
    lazy = open_feature_set(path, "val", manifest=manifest, pooling="avgmax", as_dask=True)
    assert hasattr(lazy.X, "compute")
    np.testing.assert_array_equal(
        lazy.X.compute(), open_feature_set(path, "val", manifest=manifest, pooling="avgmax").X
    )


def test_views_grow_in_views_and_in_images(tmp_path):
    manifest = records({"train": ["t0", "t1", "t2", "t3", "t4"], "val": ["v0"], "test": ["s0"]})
    train = [r.sha256 for r in manifest if r.split == "train"]
    path = tmp_path / "views" / "mv2.zarr"
    identity = {**IDENTITY, "augment": {"ops": {"flip": "horizontal"}, "seed": 0}}
    _, writes, _ = extract(path, train[:3], identity=identity, views=2, view_offset=10.0)
    assert sum(len(w.rows) for w in writes) == 6
    _, writes, counts = extract(path, train, identity=identity, views=3, view_offset=10.0)
    # New images get every view; old images only the new view (computed counts image × view passes).
    assert sum(len(w.rows) for w in writes) == 2 * 3 + 3 * 1 == counts["computed"] and counts["reused"] == 0
    views = open_views(path, "train", manifest=manifest, pooling="avg")
    assert views.X.shape == (5, 3, 4)
    expected = np.stack(
        [
            [(features_of(h) + v * 10.0).astype(np.float16).astype(np.float32).mean((0, 1)) for v in range(3)]
            for h in train
        ]
    )
    np.testing.assert_allclose(views.X, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="no views of every val image"):
        open_views(path, "val", manifest=manifest)


def test_listing_and_a_missing_store(store, tmp_path):
    path, _ = store
    (info,) = list_feature_sets(path.parent)
    assert (info.key, info.rows, info.pending, info.feature_shape) == ("mv2", 17, False, SHAPE)
    with pytest.raises(FileNotFoundError, match="no feature store at"):
        open_feature_set(tmp_path / "nope.zarr", manifest=[])


def test_the_manifest_is_found_above_the_store(store, tmp_path):
    from pipeline.manifest import write_manifest

    path, manifest = store
    with pytest.raises(FileNotFoundError, match="no data/manifest.csv above"):
        open_feature_set(path, "test")
    write_manifest(manifest, tmp_path / "data" / "manifest.csv")
    assert len(open_feature_set(path, "test").y) == 4


def test_chunks_are_at_least_the_asked_size_and_whole_batches():
    assert rows_per_chunk((7, 7, 1280), 2, chunk_mb=1.0, batch_size=8) == 8
    assert rows_per_chunk((16,), 4, chunk_mb=1.0, batch_size=32) % 32 == 0


def test_stores_work_at_an_fsspec_url():
    manifest = records(NAMES)
    url = "memory://shoulders-test/features/mv2.zarr"
    extract(url, [r.sha256 for r in manifest])
    extract(url, [r.sha256 for r in manifest] + [sha("extra")])
    test = open_feature_set(url, "test", manifest=manifest, pooling="max")
    assert test.X.shape == (4, 4)
    assert [i.key for i in list_feature_sets("memory://shoulders-test/features")] == ["mv2"]


def test_a_copied_store_is_a_store(store, tmp_path):
    path, manifest = store
    copy = tmp_path / "elsewhere" / "mv2.zarr"
    shutil.copytree(path, copy)
    np.testing.assert_array_equal(
        open_feature_set(copy, "val", manifest=manifest).X, open_feature_set(path, "val", manifest=manifest).X
    )


def test_a_second_writer_stops_at_once_naming_the_first_and_a_killed_writer_leaves_no_lock(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.store.lock import StoreBusyError

    manifest = records(NAMES)
    wanted = [r.sha256 for r in manifest]
    path = store_path(tmp_path / "features", "mv2")
    extract(path, wanted[:10])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from test_store import *; "
            f"w = StoreWriter({str(path)!r}, IDENTITY, {{}}, feature_shape=SHAPE, dtype='float16', chunk_rows=CHUNK); "
            f"w.plan({wanted!r}); print('holding', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])},
    )
    try:
        assert holder.stdout.readline().strip() == b"holding"
        with pytest.raises(StoreBusyError, match=rf"another extraction of mv2 is running \(pid {holder.pid}\)"):
            extract(path, wanted)
        with pytest.raises(StoreBusyError, match=rf"\(pid {holder.pid}\); this gc stopped"):
            collect_garbage(path, set())
        # The views store of the same feature set has a lock of its own.
        extract(tmp_path / "features" / "views" / "mv2.zarr", wanted[:4], views=1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the killed writer's lock: the next one resumes its store and finishes it.
    _, _, counts = extract(path, wanted)
    assert counts["computed"] == len(wanted) - 10
    assert open_feature_set(path, "test", manifest=manifest, pooling="none").X.shape == (4, *SHAPE)
    with StoreWriter(path, IDENTITY, {}, feature_shape=SHAPE, dtype="float16", chunk_rows=CHUNK):
        with pytest.raises(StoreBusyError, match=rf"\(pid {os.getpid()}\)"):
            extract(path, wanted)
