"""prepare's core: scanning sources, the manifest, splits and duplicates."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from conftest import write_image_folder
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import DataParams, SplitRatios
from pipeline.dataset.curation import build_manifest
from pipeline.dataset.duplicates import cross_split_pairs, hamming, perceptual_hash, remove_duplicates
from pipeline.dataset.sources import Candidate, scan_source
from pipeline.dataset.splits import stratified_split
from pipeline.images import BadImageError
from pipeline.manifest import read_manifest, write_manifest


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
    # Distinct seeds per split: equal ones would make cross-split duplicates.
    for seed, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 3))):
        write_image_folder(tmp_path / "ds" / split, classes=2, per_class=n, seed=seed)
    records, report = build_manifest(DataParams(source=str(tmp_path / "ds")), progress=False)
    assert report.layout == "presplit"
    assert report.per_split == {"train": 12, "val": 4, "test": 6}
    assert all(r.id.startswith(r.split + "/") for r in records)


def _presplit(root, splits):
    # Distinct seeds per split: equal ones would make cross-split duplicates.
    for seed, (split, n) in enumerate(splits):
        write_image_folder(root / split, classes=2, per_class=n, seed=seed)
    return root


@pytest.mark.parametrize("val_folder", ["val", "validation", "Validation"])
def test_train_and_val_without_test_gets_test_drawn_from_train_seeded(tmp_path, val_folder):
    root = _presplit(tmp_path / "ds", [("Train" if val_folder[0] == "V" else "train", 20), (val_folder, 4)])
    records, report = build_manifest(DataParams(source=str(root)), progress=False)
    assert report.layout == "presplit"
    # 0.15 / (0.7 + 0.15) of each class's 20 training images: 3.5, rounded to 4; the given val kept whole.
    assert report.per_split == {"train": 32, "val": 8, "test": 8}
    assert all(r.id.startswith(val_folder + "/") for r in records if r.split == "val")
    assert all(r.id.lower().startswith("train/") for r in records if r.split == "test")
    assert "test drawn from train: 17.6%" in report.split_policy and "seed 0" in report.split_policy
    again, _ = build_manifest(DataParams(source=str(root)), progress=False)
    other, _ = build_manifest(DataParams(source=str(root), seed=1), progress=False)

    def drawn(rs):
        return sorted(r.id for r in rs if r.split == "test")

    assert drawn(again) == drawn(records) != drawn(other)


def test_train_and_test_without_val_gets_val_drawn_unless_its_ratio_is_zero(tmp_path):
    root = _presplit(tmp_path / "ds", [("train", 10), ("test", 3)])
    _, report = build_manifest(DataParams(source=str(root)), progress=False)
    assert report.per_split == {"train": 16, "val": 4, "test": 6}
    no_val = SplitRatios(train=0.8, val=0.0, test=0.2)
    _, report = build_manifest(DataParams(source=str(root), split=no_val), progress=False)
    assert report.per_split == {"train": 20, "val": 0, "test": 6}


@pytest.mark.parametrize(
    "folders, why, fix",
    [
        (["train"], "a train/ folder and no val/ or test/", "move the class folders up"),
        (["val", "test"], "no train/", "name the folder of the training images train/"),
        (["train", "val", "validation"], "2 folders are the val split: ['val', 'validation']", "merge them"),
        (["train", "test", "extra"], "mixes split folders ['test', 'train'] with other folders ['extra']", "move"),
        (
            ["cats/train", "cats/test", "dogs/train", "dogs/test"],
            "class folders hold split folders (cats/test/",
            "<root>/<split>/<class>/",
        ),
        (
            ["dataset/train", "dataset/test"],
            "one folder, dataset/, which holds the folders ['test', 'train']",
            "point data.source at",
        ),
    ],
)
def test_ambiguous_layouts_are_refused_naming_the_folders_the_layouts_and_the_fix(tmp_path, folders, why, fix):
    for i, folder in enumerate(folders):
        write_image_folder(tmp_path / "ds" / folder, classes=2, per_class=2, seed=i)
    with pytest.raises(ValueError) as error:
        scan_source(tmp_path / "ds")
    message = str(error.value)
    assert why in message and fix in message and "Layouts accepted:" in message
    assert f"folders found: {sorted({f.split('/')[0] for f in folders})}" in message


def test_a_split_folder_of_loose_images_is_refused(tmp_path):
    write_image_folder(tmp_path / "ds" / "test", classes=2, per_class=2)
    write_image_folder(tmp_path / "flat", classes=1, per_class=3)
    shutil.move(tmp_path / "flat" / "class_0", tmp_path / "ds" / "train")  # train/img_000.png, ...
    with pytest.raises(ValueError, match=r"train/ holds images but no class folders.*train/<class>/<images>"):
        scan_source(tmp_path / "ds")


def _write_table(root, rows, header="path,label,split"):
    root.joinpath("labels.csv").write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return root / "labels.csv"


def test_a_csv_source_keeps_its_split_and_draws_the_missing_one(tmp_path):
    paths = write_image_folder(tmp_path / "ds" / "pics", classes=2, per_class=8)
    rows = [
        (p.relative_to(tmp_path / "ds").as_posix(), f"kind{p.parent.name[-1]}", "VALID" if i % 8 >= 6 else "train")
        for i, p in enumerate(paths)
    ]
    table = _write_table(tmp_path / "ds", rows)
    records, report = build_manifest(DataParams(source=str(table)), progress=False)
    assert report.layout == "table" and report.classes == ["kind0", "kind1"]
    assert report.per_split == {"train": 10, "val": 4, "test": 2}
    assert all(r.path == f"{tmp_path}/ds/{r.id}" and r.id.startswith("pics/") for r in records)
    # Without the split column the rows are split by data.split.
    table = _write_table(tmp_path / "ds", [r[:2] for r in rows], header="path,label")
    _, report = build_manifest(DataParams(source=str(table)), progress=False)
    assert report.per_split == {"train": 12, "val": 2, "test": 2} and "data.split" in report.split_policy


def test_a_csv_source_names_every_bad_row(tmp_path):
    paths = write_image_folder(tmp_path / "ds", classes=2, per_class=2)
    (tmp_path / "ds" / "notes.txt").write_text("x")
    (tmp_path / "outside.png").write_bytes(paths[0].read_bytes())
    rel = [p.relative_to(tmp_path / "ds").as_posix() for p in paths]
    table = _write_table(
        tmp_path / "ds",
        [
            (rel[0], "a", "train"),
            (rel[1], "", "train"),
            (rel[2], "b", "tst"),
            (rel[0], "a", "test"),
            ("missing.png", "a", "test"),
            ("notes.txt", "a", "test"),
            ("../outside.png", "b", "test"),
        ],
    )
    with pytest.raises(ValueError) as error:
        build_manifest(DataParams(source=str(table)), progress=False)
    message = str(error.value)
    assert message.startswith(f"6 row(s) of {table} cannot be used")
    for expected in (
        "line 3 (class_0/img_001.png): empty label",
        "split 'tst' is not one of",
        "line 5 (class_0/img_000.png): the same path as line 2",
        "line 6 (missing.png): no such file",
        "line 7 (notes.txt): not an image file",
        "../outside.png: leads out of the dataset folder",
    ):
        assert expected in message
    _write_table(tmp_path / "ds", [(rel[0], "a")], header="file,label")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['path'\]"):
        build_manifest(DataParams(source=str(table)), progress=False)


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


def test_class_too_small_to_split_is_named(tmp_path):
    write_image_folder(tmp_path / "ds", classes=2, per_class=4)
    for extra in list((tmp_path / "ds/class_1").iterdir())[2:]:
        extra.unlink()
    with pytest.raises(ValueError, match="class 'class_1' has 2 image.*at least 3 per class"):
        build_manifest(DataParams(source=str(tmp_path / "ds")), progress=False)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=3, max_value=60), min_size=2, max_size=6),
    ratios=st.sampled_from([(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.6, 0.0, 0.4)]),
    seed=st.integers(0, 2**16),
)
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


def test_split_by_name_equals_split_by_index():
    # prepare splits by class name (so errors can name the class); the split must not change because of it.
    names = ["cat", "dog", "emu"]
    labels = np.random.default_rng(0).integers(0, 3, size=200)
    by_index = stratified_split(labels, SplitRatios(), seed=4)
    by_name = stratified_split([names[i] for i in labels], SplitRatios(), seed=4)
    np.testing.assert_array_equal(by_index, by_name)


def test_empty_class_folder_is_reported_not_labelled(image_folder):
    (image_folder / "empty_class").mkdir()
    (image_folder / "empty_class" / ".DS_Store").write_bytes(b"\0")
    (image_folder / "only_notes").mkdir()
    (image_folder / "only_notes" / "notes.txt").write_text("todo")
    records, report = build_manifest(DataParams(source=str(image_folder)), progress=False)
    assert report.classes == ["class_0", "class_1", "class_2"]
    assert {r.class_name for r in records} == set(report.classes)
    assert report.empty_classes == {"empty_class": "no image files", "only_notes": "no image files"}
    assert any("'empty_class' is not a class" in w for w in report.warnings)


def test_class_with_no_training_images_is_an_error(tmp_path):
    root = tmp_path / "ds"
    for seed, split in enumerate(("train", "val", "test")):
        write_image_folder(root / split, classes=2, per_class=3, seed=seed)
    for image in (root / "train/class_1").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"\['class_1'\] have no training images.*train 0, val 3, test 3"):
        build_manifest(DataParams(source=str(root)), progress=False)


def test_class_missing_from_a_split_is_warned_about(tmp_path):
    root = tmp_path / "ds"
    for seed, split in enumerate(("train", "val", "test")):
        write_image_folder(root / split, classes=2, per_class=3, seed=seed)
    shutil.rmtree(root / "val/class_1")
    _, report = build_manifest(DataParams(source=str(root)), progress=False)
    assert report.per_class_split["class_1"]["val"] == 0
    assert report.warnings == ["class(es) ['class_1'] have no val images: their val accuracy is not measured"]


def test_manifest_survives_a_full_disk(tmp_path, image_folder, monkeypatch):
    import csv
    import errno

    records, _ = build_manifest(DataParams(source=str(image_folder)), progress=False)
    path = tmp_path / "data" / "manifest.csv"
    write_manifest(records, path)
    before = path.read_bytes()
    written = []

    def fill_up(self, row):
        written.append(row)
        if len(written) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, row)

    original = csv.DictWriter.writerow
    monkeypatch.setattr(csv.DictWriter, "writerow", fill_up)
    with pytest.raises(OSError, match="No space left"):
        write_manifest(records[:20], path)
    assert path.read_bytes() == before  # the previous manifest, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.csv"]  # no temporary file left


def _noise(seed, shape=(40, 48, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_perceptual_hash_survives_reencoding_and_resizing_but_separates_images(tmp_path):
    from PIL import Image

    smooth = np.kron(_noise(0, (8, 8, 3)), np.ones((16, 16, 1), np.uint8))  # 128×128 blocks: a "photo"
    original = perceptual_hash(smooth)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=70)
    reencoded = perceptual_hash(np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")))
    resized = perceptual_hash(np.asarray(Image.fromarray(smooth).resize((96, 96), Image.Resampling.BILINEAR)))
    brighter = perceptual_hash(np.clip(smooth.astype(int) + 10, 0, 255).astype(np.uint8))
    other = perceptual_hash(np.kron(_noise(1, (8, 8, 3)), np.ones((16, 16, 1), np.uint8)))
    assert hamming(original, reencoded) <= 4 and hamming(original, resized) <= 4
    assert hamming(original, brighter) <= 2
    assert hamming(original, other) > 12


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["train", "val", "test"]), st.integers(0, 2**64 - 1)), max_size=40),
    st.integers(0, 3) | st.integers(0, 64),
)  # small thresholds often, so that the boundary is hit
def test_cross_split_pairs_match_brute_force(items, max_distance):
    ids = [f"img_{i}" for i in range(len(items))]
    splits = [s for s, _ in items]
    # Past the fifth, each hash is a first-five hash with one bit flipped, so that close pairs occur.
    hashes = [h if i < 5 else items[i % 5][1] ^ (1 << (i % 64)) for i, (_, h) in enumerate(items)]
    found = {(p.id_a, p.id_b, p.distance) for p in cross_split_pairs(ids, splits, hashes, max_distance=max_distance)}
    order = {"train": 0, "val": 1, "test": 2}
    expected = set()
    for i in range(len(ids)):
        for j in range(len(ids)):
            d = hamming(hashes[i], hashes[j])
            if order[splits[i]] < order[splits[j]] and d <= max_distance:
                expected.add((ids[i], ids[j], d))
    assert found == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["train", "val", "test", None]), st.integers(0, 6), st.sampled_from(["a", "b"])),
        min_size=1,
        max_size=30,
    )
)
def test_remove_duplicates_properties(rows):
    class Info:
        def __init__(self, sha256):
            self.sha256 = sha256

    items = [
        (Candidate(id=f"{i:03d}", path="", class_name=cls, split=split), Info(str(content)))
        for i, (split, content, cls) in enumerate(rows)
    ]
    kept, counts, groups = remove_duplicates(items)
    assert len({info.sha256 for _, info in kept}) == len(kept) == len({info.sha256 for _, info in items})
    assert counts["removed_within_split"] + counts["removed_cross_split"] == len(items) - len(kept)
    multiple = {h: n for h, n in Counter(i.sha256 for _, i in items).items() if n > 1}
    assert counts["groups"] == len(groups) == len(multiple)
    classes_of = {h: {c.class_name for c, i in items if i.sha256 == h} for h in multiple}
    assert counts["label_conflicts"] == sum(len(c) > 1 for c in classes_of.values())
    rank = {"test": 0, "val": 1, "train": 2, None: 3}
    for candidate, info in kept:  # the kept copy is the most held-out one
        same = [c for c, i in items if i.sha256 == info.sha256]
        assert rank[candidate.split] == min(rank[c.split] for c in same)
    assert sum(len(g) for g in groups) - len(groups) == len(items) - len(kept)
