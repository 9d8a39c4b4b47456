"""The Zarr feature store: chunked writes, completion, provenance checks, pooled reads."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.store.layout import rows_per_chunk, store_path, StoreError
from pipeline.store.reader import list_feature_sets, open_feature_set, open_store
from pipeline.store.writer import FeatureWriter, SplitRows

SHAPE = (3, 3, 4)
PROVENANCE = {"backbone": "test", "cut": "layer", "weights": "none", "manifest_sha256": "abc"}


def _splits(n_train=10, n_val=3, n_test=4):
    return {s: SplitRows(np.arange(n) % 2, np.array([f"{s}/{i}.png" for i in range(n)]))
            for s, n in (("train", n_train), ("val", n_val), ("test", n_test))}


def _data(n, seed):
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


def _write_all(writer, data):
    for split, X in data.items():
        for chunk in writer.pending_chunks(split):
            writer.write_chunk(split, chunk, X[writer.chunk_rows_of(split, chunk).start:writer.chunk_rows_of(split, chunk).stop])


@pytest.fixture
def data():
    return {"train": _data(10, 0), "val": _data(3, 1), "test": _data(4, 2)}


def make_writer(tmp_path, provenance=PROVENANCE, chunk_rows=4, dtype="float16"):
    return FeatureWriter(store_path(tmp_path / "features", "fs"), provenance, _splits(),
                         ["a", "b"], SHAPE, dtype, chunk_rows)


def test_write_finalize_and_read(tmp_path, data):
    writer = make_writer(tmp_path)
    _write_all(writer, data)
    path = writer.finalize()
    assert path == tmp_path / "features" / "fs.zarr"
    fs = open_feature_set(path, "train", pooling="none")
    np.testing.assert_array_equal(np.asarray(fs.X), data["train"].astype(np.float16))
    assert fs.y.tolist() == [0, 1] * 5 and fs.ids[3] == "train/3.png"
    assert fs.classes == ("a", "b") and fs.provenance["cut"] == "layer"
    assert not writer.partial_path.exists()


@pytest.mark.parametrize("pooling, width", [("avg", 4), ("max", 4), ("avgmax", 8), ("flatten", 36)])
def test_pooling_shapes_and_values(tmp_path, data, pooling, width):
    writer = make_writer(tmp_path, dtype="float32")
    _write_all(writer, data)
    path = writer.finalize()
    X = open_feature_set(path, "test", pooling=pooling).X
    assert X.shape == (4, width)
    expected = {"avg": data["test"].mean(axis=(1, 2)), "max": data["test"].max(axis=(1, 2)),
                "flatten": data["test"].reshape(4, -1)}.get(pooling)
    if expected is not None:
        np.testing.assert_allclose(X, expected, rtol=1e-6)
    lazy = open_feature_set(path, "test", pooling=pooling, as_dask=True).X
    np.testing.assert_allclose(lazy.compute(), X, rtol=1e-6)


def test_incomplete_store_is_refused(tmp_path, data):
    writer = make_writer(tmp_path)
    _write_all(writer, {"train": data["train"]})
    with pytest.raises(StoreError, match="not written"):
        writer.finalize()
    with pytest.raises(StoreError, match="incomplete"):
        open_store(writer.partial_path)


def test_store_marked_incomplete_is_refused(tmp_path, data):
    import zarr

    writer = make_writer(tmp_path)
    _write_all(writer, data)
    path = writer.finalize()
    zarr.open_group(path, mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        open_feature_set(path, "train")


def test_mismatched_provenance_is_refused_for_reading(tmp_path, data):
    writer = make_writer(tmp_path)
    _write_all(writer, data)
    path = writer.finalize()
    with pytest.raises(StoreError, match="cut: store has 'layer', expected 'other'"):
        open_feature_set(path, "train", expect={"cut": "other"})


def test_resume_continues_and_other_provenance_starts_afresh(tmp_path, data):
    first = make_writer(tmp_path)
    first.write_chunk("train", 0, data["train"][:4])
    again = make_writer(tmp_path)
    assert again.partial_path == first.partial_path
    assert again.pending_chunks("train") == [1, 2]  # chunk 0 is kept
    other = make_writer(tmp_path, provenance={**PROVENANCE, "weights": "imagenet"})
    assert other.partial_path != first.partial_path
    assert other.pending_chunks("train") == [0, 1, 2]  # never resumed into


def test_corrupted_chunk_is_detected_not_read(tmp_path, data):
    writer = make_writer(tmp_path)
    _write_all(writer, data)
    chunk = writer.partial_path / "train" / "X" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="corrupt"):
        writer.finalize()


def test_non_finite_features_are_refused(tmp_path, data):
    writer = make_writer(tmp_path)
    data["val"][1, 0, 0, 0] = np.nan
    _write_all(writer, data)
    with pytest.raises(StoreError, match="NaN or Inf"):
        writer.finalize()


def test_finalize_replaces_an_older_store(tmp_path, data):
    writer = make_writer(tmp_path)
    _write_all(writer, data)
    writer.finalize()
    newer = make_writer(tmp_path, provenance={**PROVENANCE, "manifest_sha256": "def"})
    _write_all(newer, data)
    path = newer.finalize()
    assert open_store(path).attrs["provenance"]["manifest_sha256"] == "def"
    assert sorted(p.name for p in path.parent.iterdir() if p.name != ".incomplete") == ["fs.zarr"]


def test_listing(tmp_path, data):
    writer = make_writer(tmp_path)
    _write_all(writer, data)
    writer.finalize()
    [info] = list_feature_sets(tmp_path / "features")
    assert info.key == "fs" and info.complete and info.rows == {"train": 10, "val": 3, "test": 4}


def test_chunks_are_at_least_the_asked_size_and_whole_batches():
    rows = rows_per_chunk((7, 7, 1280), 2, chunk_mb=1.0, batch_size=32)
    assert rows % 32 == 0 and rows * 7 * 7 * 1280 * 2 >= 1e6


def test_unknown_split_and_pooling(tmp_path, data):
    writer = make_writer(tmp_path)
    _write_all(writer, data)
    path = writer.finalize()
    with pytest.raises(ValueError, match="'dev'"):
        open_feature_set(path, "dev")
    with pytest.raises(ValueError, match="'mean'"):
        open_feature_set(path, "train", pooling="mean")


def test_missing_store_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        open_feature_set(tmp_path / "nope.zarr")


def test_stores_work_at_an_fsspec_url(data):
    # memory:// stands in for object storage: the same code path as s3:// or gs://.
    import uuid

    root = f"memory://features-{uuid.uuid4().hex[:8]}"
    writer = FeatureWriter(store_path(root, "fs"), PROVENANCE, _splits(), ["a", "b"], SHAPE, "float32", 4)
    assert writer.partial_path == f"{root}/.incomplete/fs-{writer.partial_path.split('-')[-1]}"
    writer.write_chunk("train", 0, data["train"][:4])
    resumed = FeatureWriter(store_path(root, "fs"), PROVENANCE, _splits(), ["a", "b"], SHAPE, "float32", 4)
    assert resumed.pending_chunks("train") == [1, 2]
    _write_all(resumed, data)
    path = resumed.finalize()
    assert path == f"{root}/fs.zarr"
    np.testing.assert_array_equal(open_feature_set(path, "val", pooling="none").X, data["val"])
    [info] = list_feature_sets(root)
    assert info.key == "fs" and info.complete
    with pytest.raises(FileNotFoundError):
        open_feature_set(f"{root}/other.zarr")
