"""prepare's core: scanning sources, the manifest, splits and duplicates."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_image_folder
from pipeline.config import DataParams, SplitRatios
from pipeline.data import (BadImageError, build_manifest, read_manifest, scan_source, stratified_split,
                           write_manifest)


def test_class_folder_layout_is_split_by_ratio(image_folder):
    records, report = build_manifest(DataParams(source=str(image_folder)), progress=False)
    assert report.layout == "classes"
    assert len(records) == 30
    # 10 per class at 0.7/0.15/0.15: 7 train, and the odd one of 1.5 + 1.5 goes to val.
    assert report.per_split == {"train": 21, "val": 6, "test": 3}
    assert {r.class_name for r in records} == {"class_0", "class_1", "class_2"}
    for counts in report.per_class_split.values():
        assert all(counts[s] >= 1 for s in ("train", "val", "test"))
    assert all(len(r.sha256) == 64 and (r.width, r.height) == (48, 40) for r in records)


def test_manifest_is_deterministic_and_seed_dependent(image_folder):
    a, _ = build_manifest(DataParams(source=str(image_folder), seed=1), progress=False)
    b, _ = build_manifest(DataParams(source=str(image_folder), seed=1), progress=False)
    c, _ = build_manifest(DataParams(source=str(image_folder), seed=2), progress=False)
    assert a == b
    assert [r.split for r in a] != [r.split for r in c] or [r.id for r in a] != [r.id for r in c]


def test_presplit_layout_keeps_the_given_split(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_image_folder(tmp_path / "ds" / split, classes=2, per_class=n, seed=hash(split) % 100)
    records, report = build_manifest(DataParams(source=str(tmp_path / "ds")), progress=False)
    assert report.layout == "presplit"
    assert report.per_split == {"train": 12, "val": 4, "test": 6}
    assert all(r.id.startswith(r.split + "/") for r in records)


def test_presplit_without_test_is_refused(tmp_path):
    write_image_folder(tmp_path / "ds" / "train", classes=2, per_class=2)
    with pytest.raises(ValueError, match="no test/"):
        scan_source(tmp_path / "ds")


def test_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        build_manifest(DataParams(source=str(tmp_path / "nothing-here")), progress=False)


def test_every_bad_image_is_named(image_folder):
    (image_folder / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    (image_folder / "class_1" / "EMPTY.PNG").write_bytes(b"")
    with pytest.raises(BadImageError) as error:
        build_manifest(DataParams(source=str(image_folder)), progress=False)
    assert "broken.jpg" in str(error.value) and "EMPTY.PNG" in str(error.value)
    assert "2 image(s)" in str(error.value)


def test_skip_policy_counts_bad_images(image_folder):
    (image_folder / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    records, report = build_manifest(DataParams(source=str(image_folder), bad_images="skip"), progress=False)
    assert len(records) == 30
    assert len(report.bad_images_skipped) == 1 and "broken.jpg" in report.bad_images_skipped[0]


def test_junk_is_ignored_and_other_files_reported(image_folder):
    (image_folder / "class_0" / ".DS_Store").write_bytes(b"\0junk")
    (image_folder / "class_0" / "Thumbs.db").write_bytes(b"\0junk")
    (image_folder / "class_0" / "._img_000.png").write_bytes(b"\0mac resource fork")
    (image_folder / "class_1" / "notes.txt").write_text("labelled by Ann")
    records, report = build_manifest(DataParams(source=str(image_folder)), progress=False)
    assert len(records) == 30
    assert report.other_files_ignored == ["class_1/notes.txt"]


def test_duplicates_across_splits_are_removed_from_train(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 5), ("test", 3)):
        write_image_folder(root / split, classes=2, per_class=n, seed=len(split))
    # One test image also in train (leak) and one train image twice (repeat).
    shutil.copy(root / "test/class_0/img_000.png", root / "train/class_0/leaked.png")
    shutil.copy(root / "train/class_1/img_000.png", root / "train/class_1/again.png")
    records, report = build_manifest(DataParams(source=str(root)), progress=False)
    ids = {r.id for r in records}
    assert "train/class_0/leaked.png" not in ids and "test/class_0/img_000.png" in ids
    assert len([i for i in ids if i.startswith("train/class_1/")]) == 5
    assert report.duplicates["removed_cross_split"] == 1
    assert report.duplicates["removed_within_split"] == 1
    assert report.duplicates["train_test"] == 1
    hashes = Counter(r.sha256 for r in records)
    assert max(hashes.values()) == 1


def test_duplicates_kept_when_asked(tmp_path):
    root = tmp_path / "ds"
    write_image_folder(root, classes=2, per_class=4)
    shutil.copy(root / "class_0/img_000.png", root / "class_0/copy.png")
    records, _ = build_manifest(DataParams(source=str(root), duplicates="keep"), progress=False)
    assert len(records) == 9


def test_manifest_round_trip(tmp_path, image_folder):
    records, _ = build_manifest(DataParams(source=str(image_folder)), progress=False)
    write_manifest(records, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv") == records


def test_class_too_small_to_split(tmp_path):
    write_image_folder(tmp_path / "ds", classes=2, per_class=2)
    with pytest.raises(ValueError, match="at least 3 per class"):
        build_manifest(DataParams(source=str(tmp_path / "ds")), progress=False)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(min_value=3, max_value=60), min_size=2, max_size=6),
       ratios=st.sampled_from([(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.6, 0.0, 0.4)]),
       seed=st.integers(0, 2**16))
def test_split_properties(counts, ratios, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    split_ratios = SplitRatios(*ratios)
    splits = stratified_split(labels, split_ratios, seed)
    assert set(splits) <= {"train", "val", "test"} and len(splits) == len(labels)  # each item in exactly one
    np.testing.assert_array_equal(splits, stratified_split(labels, split_ratios, seed))  # deterministic
    for label, n in enumerate(counts):
        mine = splits[labels == label]
        for name, ratio in zip(("train", "val", "test"), ratios):
            got = int((mine == name).sum())
            if ratio == 0:
                assert got == 0
            else:
                assert got >= 1
                assert abs(got - ratio * n) <= 1.5  # stratified: each class follows the ratios
