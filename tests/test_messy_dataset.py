"""A deliberately messy dataset, built on the fly: prepare must end each case in a right result or a clear error.

The tree is pre-split (``train|val|test/<class>/``) so that duplicates can be
planted across splits. Every count asserted below is derived by hand in the
docstring of :func:`messy`.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from conftest import SIGNS, tiny_params, write_params
from PIL import Image

from pipeline.config import DataParams, NearDuplicateParams
from pipeline.dataset.curation import build_manifest
from pipeline.images import BadImageError
from pipeline.manifest import read_manifest
from pipeline.stages import prepare

BAD_FILES = ("train/bird/notes.jpg", "train/dog/empty.png", "val/dog/truncated.jpg", "test/cat/truncated.png")


def _noise(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _save(root, rel, image: Image.Image, **kwargs):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Build the messy tree. Expected after ``bad_images: skip`` and duplicate removal:

    - base noise PNGs img_0..: train 6, val 3, test 3 per class (cat, dog);
    - train/cat + 6 kinds (grey, palette, rgba, animated gif, 8×12 PNG, webp);
      train/dog + 6 (CMYK jpeg, 16-bit png, EXIF-rotated .JPG, 1×1 png, 6000×4000 .jpeg, bmp);
      val/cat + UPPER.JPEG; test/dog + photo.Jpg; test/cat + near.png (a brightened
      copy of train/cat/img_3: other bytes, near-identical picture);
    - exact duplicates, 5 groups: train/cat/img_0_copy (within train), train/dog/leak
      = test/dog/img_0 (train/test), t1 in train/cat, val/cat = test/cat/img_1
      (train/val/test), val/dog/v = test/dog/img_1 (val/test), train/dog/wrong_label
      = train/cat/img_2 (within train, two classes). Removed across splits 4, within 2;
    - 4 undecodable files (BAD_FILES), so class folder ``bird`` has no usable image;
      ``ghost`` exists in every split with only OS junk;
    - OS junk and hidden files everywhere, and two non-image files (labels.txt, README.md).

    Totals: train 12 + 12 = 24, val 4 + 3 = 7, test 4 + 4 = 8; 39 images, of which 2
    (the 1×1 and the 8×12) have a side under 32 px.
    """
    root = tmp_path_factory.mktemp("messy") / "ds"
    seed = iter(range(1000))
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _save(root, f"{split}/{cls}/img_{i}.png", Image.fromarray(_noise(next(seed))))
    # Every kind of image people have.
    _save(root, "train/cat/grey.png", Image.fromarray(_noise(next(seed))).convert("L"))
    palette = Image.fromarray(_noise(next(seed))).convert("P", palette=Image.Palette.ADAPTIVE)
    _save(root, "train/cat/palette.png", palette, transparency=0)
    _save(root, "train/cat/rgba.png", Image.fromarray(_noise(next(seed))).convert("RGBA"))
    frames = [Image.fromarray(_noise(next(seed), 32, 32)), Image.new("RGB", (32, 32), (0, 0, 255))]
    _save(root, "train/cat/anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=40, loop=0)
    _save(root, "train/cat/small.PNG", Image.fromarray(_noise(next(seed), 8, 12)))
    _save(root, "train/cat/pic.webp", Image.fromarray(_noise(next(seed))), lossless=True)
    _save(root, "train/dog/cmyk.jpg", Image.fromarray(_noise(next(seed))).convert("CMYK"), quality=95)
    _save(root, "train/dog/deep.png", Image.fromarray(np.linspace(0, 65535, 40 * 48, dtype=np.uint16).reshape(40, 48)))
    rotated = Image.fromarray(_noise(next(seed), 40, 64))
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated by 90°: stored 64 wide × 40 high, shown 40 × 64
    _save(root, "train/dog/rotated.JPG", rotated, exif=exif, quality=90)
    _save(root, "train/dog/tiny.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    ramp = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None].repeat(4000, 0).repeat(3, 2)
    _save(root, "train/dog/large.jpeg", Image.fromarray(ramp), quality=80)
    _save(root, "train/dog/pic.bmp", Image.fromarray(_noise(next(seed))))
    _save(root, "val/cat/UPPER.JPEG", Image.fromarray(_noise(next(seed))), quality=95)
    _save(root, "test/dog/photo.Jpg", Image.fromarray(_noise(next(seed))), quality=95)
    brighter = np.clip(np.asarray(Image.open(root / "train/cat/img_3.png"), np.int16) + 3, 0, 255)
    _save(root, "test/cat/near.png", Image.fromarray(brighter.astype(np.uint8)))
    # Exact duplicates, within and across splits.
    copies = {
        "train/cat/img_0.png": ["train/cat/img_0_copy.png"],
        "test/dog/img_0.png": ["train/dog/leak.png"],
        "test/cat/img_1.png": ["train/cat/t1.png", "val/cat/t1.png"],
        "test/dog/img_1.png": ["val/dog/v.png"],
        "train/cat/img_2.png": ["train/dog/wrong_label.png"],
    }
    for source, targets in copies.items():
        for target in targets:
            shutil.copy(root / source, root / target)
    # Files that are not images, or no longer whole.
    (root / "train/bird").mkdir()
    (root / "train/bird/notes.jpg").write_text("not a picture")
    (root / "train/dog/empty.png").write_bytes(b"")
    (root / "val/dog/truncated.jpg").write_bytes(_encoded(Image.fromarray(_noise(1, 200, 200)), "JPEG")[:1500])
    (root / "test/cat/truncated.png").write_bytes(_encoded(Image.fromarray(_noise(2, 200, 200)), "PNG")[:3000])
    # OS junk, hidden files and folders, empty class folders, other files.
    for split in ("train", "val", "test"):
        (root / split / "ghost").mkdir()
        (root / split / "ghost" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train/cat/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train/dog/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "train/cat/._img_0.png").write_bytes(b"\0\5\26\7 mac resource fork")
    (root / "train/cat/.hidden").mkdir()
    shutil.copy(root / "train/cat/img_4.png", root / "train/cat/.hidden/img_4.png")
    (root / "__MACOSX/train/cat").mkdir(parents=True)
    (root / "__MACOSX/train/cat/._img_1.png").write_bytes(b"\0\5\26\7")
    (root / "train/cat/labels.txt").write_text("cat\n")
    (root / "README.md").write_text("collected by hand\n")
    return root


@pytest.fixture(scope="module")
def skipped(messy):
    return build_manifest(DataParams(source=str(messy), bad_images="skip"), progress=False)


def test_bad_files_stop_prepare_naming_each(messy):
    with pytest.raises(BadImageError) as error:
        build_manifest(DataParams(source=str(messy)), progress=False)
    message = str(error.value)
    assert "4 image(s)" in message and "data.bad_images: skip" in message
    for rel in BAD_FILES:
        assert rel in message


def test_an_empty_or_unrecognised_file_is_named_and_said_what_it_is(messy):
    with pytest.raises(BadImageError) as error:
        build_manifest(DataParams(source=str(messy)), progress=False)
    lines = {line.strip().split(": ")[0].split("/ds/")[-1]: line for line in str(error.value).splitlines()[1:]}
    assert lines["train/dog/empty.png"].endswith("train/dog/empty.png: the file is empty (0 bytes), not an image")
    assert "not an image format Pillow reads (13 bytes, starting b'not a pi')" in lines["train/bird/notes.jpg"]
    assert "BytesIO" not in str(error.value)


def test_counts_after_skip_and_deduplication(skipped):
    records, report = skipped
    assert report.per_split == {"train": 24, "val": 7, "test": 8} and report.images == len(records) == 39
    assert report.per_class_split == {
        "cat": {"train": 12, "val": 4, "test": 4},
        "dog": {"train": 12, "val": 3, "test": 4},
    }
    assert report.classes == ["cat", "dog"] and report.class_imbalance == 1.0
    assert sorted(m.split(": ")[0].split("/ds/")[1] for m in report.bad_images_skipped) == sorted(BAD_FILES)
    assert report.other_files_ignored == ["README.md", "train/cat/labels.txt"]
    assert report.empty_classes == {"bird": "all 1 image(s) undecodable (skipped)", "ghost": "no image files"}


def test_duplicates_removed_and_counted(skipped):
    records, report = skipped
    assert report.duplicates == {
        "groups": 5,
        "removed_within_split": 2,
        "removed_cross_split": 4,
        "label_conflicts": 1,
        "train_test": 2,
        "train_val": 1,
        "val_test": 2,
    }
    ids = {r.id for r in records}
    assert {"test/dog/img_0.png", "test/cat/img_1.png", "test/dog/img_1.png"} <= ids  # the held-out copy stays
    assert (
        not {
            "train/dog/leak.png",
            "train/cat/t1.png",
            "val/cat/t1.png",
            "val/dog/v.png",
            "train/cat/img_0_copy.png",
            "train/dog/wrong_label.png",
        }
        & ids
    )
    by_hash = Counter(r.sha256 for r in records)
    assert max(by_hash.values()) == 1  # no image twice, so none in two splits
    assert any("more than one class" in w for w in report.warnings)


def test_every_image_kind_is_read_upright_and_whole(skipped):
    records, report = skipped
    size = {r.id: (r.width, r.height) for r in records}
    assert size["train/dog/rotated.JPG"] == (40, 64)  # EXIF orientation applied
    assert size["train/dog/large.jpeg"] == (6000, 4000)
    assert size["train/dog/tiny.png"] == (1, 1) and size["train/cat/anim.gif"] == (32, 32)
    for rel in (
        "train/cat/grey.png",
        "train/cat/palette.png",
        "train/cat/rgba.png",
        "train/cat/pic.webp",
        "train/dog/cmyk.jpg",
        "train/dog/deep.png",
        "train/dog/pic.bmp",
        "val/cat/UPPER.JPEG",
        "test/dog/photo.Jpg",
        "train/cat/small.PNG",
    ):
        assert rel in size
    # Junk, hidden files and resource forks never become images.
    assert not [i for i in size if "/." in i or "__MACOSX" in i or "ghost" in i]


def test_sizes_and_small_images_are_reported(skipped):
    _, report = skipped
    assert report.image_size["width"]["max"] == 6000 and report.image_size["height"]["min"] == 1
    assert report.small_images["count"] == 2
    assert set(report.small_images["ids"]) == {"train/dog/tiny.png", "train/cat/small.PNG"}
    assert sum(report.short_side_histogram.values()) == 39
    assert report.short_side_histogram["0-31"] == 2 and report.short_side_histogram["2048-4095"] == 1
    assert any("shorter than 32 px" in w for w in report.warnings)
    assert report.near_duplicates is None  # off unless asked for
    # Mostly small images here: the page says how much the backbone enlarges them and what to try.
    from pipeline.dataset.report import summary_markdown

    short = report.image_size["shorter side"]["median"]
    page = summary_markdown(report)
    assert short < 160 and f"The median shorter side is {short:g} px" in page and f"{224 / short:.1f}×" in page


def test_near_duplicates_are_reported_not_removed(messy):
    params = DataParams(source=str(messy), bad_images="skip", near_duplicates=NearDuplicateParams(max_distance=6))
    records, report = build_manifest(params, progress=False)
    near = report.near_duplicates
    pairs = {(p["id_a"], p["id_b"]) for p in near["listed"]}
    assert ("train/cat/img_3.png", "test/cat/near.png") in pairs
    assert near["pairs"] == len(near["listed"]) == 1 and near["by_splits"] == {"train_test": 1}
    assert {"train/cat/img_3.png", "test/cat/near.png"} <= {r.id for r in records}


def test_prepare_stage_writes_matching_reports(messy, in_tmp, monkeypatch):
    monkeypatch.setenv("SHOULDERS_CACHE_DIR", str(in_tmp / "cache"))  # prepare's record of file stats
    source = str(messy)
    raw = tiny_params(source)
    raw["data"].update(bad_images="skip", near_duplicates={"method": "phash", "max_distance": 6})
    write_params(in_tmp / "params.yaml", raw)
    prepare.main(
        [
            "--manifest",
            "data/manifest.csv",
            "--report",
            "reports/prepare.json",
            "--summary",
            "reports/prepare.md",
            "--metrics",
            "reports/data_metrics.json",
            "--no-progress",
        ]
    )
    report = json.loads((in_tmp / "reports/prepare.json").read_text())
    metrics = json.loads((in_tmp / "reports/data_metrics.json").read_text())["data"]
    summary = (in_tmp / "reports/prepare.md").read_text()
    assert len(read_manifest(in_tmp / "data/manifest.csv")) == report["images"] == metrics["images"] == 39
    assert metrics == {
        "images": 39,
        "train": 24,
        "val": 7,
        "test": 8,
        "classes": 2,
        "class_imbalance": 1.0,
        "duplicates_removed_cross_split": 4,
        "duplicates_removed_within_split": 2,
        "bad_images_skipped": 4,
        "empty_classes": 2,
        "small_images": 2,
        "near_duplicate_pairs_cross_split": 1,
    }
    assert "removed 4 that leaked across splits and 2 repeats within a split" in summary
    assert "1 suspected pair(s) within 6 bits" in summary and "test/cat/near.png" in summary
    assert "`ghost`: no image files" in summary and "## Warnings" in summary
    assert "| width | 1 |" in summary and "6000 |" in summary


@pytest.mark.real_data
@pytest.mark.skipif(not SIGNS.is_dir(), reason="needs ../shared/datasets/signs")
def test_signs_leakage_is_removed_and_reported():
    records, report = build_manifest(DataParams(source=str(SIGNS)), progress=False)
    assert report.duplicates["groups"] == 56
    assert report.duplicates["removed_cross_split"] == 27 and report.duplicates["removed_within_split"] == 29
    assert report.images == 1200 - 56
    splits_of = {}
    for r in records:
        splits_of.setdefault(r.sha256, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert report.per_split["test"] == 119  # one test image was a copy of another test image


# --------------------------------------------------------------------------- names, links, huge images


def _small_tree(root, classes=("cat", "dog"), per_class=6):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _save(root, f"{name}/img_{i}.png", Image.fromarray(_noise(100 * c + i)))
    return root


def test_names_and_links_that_cannot_be_used_stop_prepare_with_each_path_named(tmp_path):
    import os

    root = _small_tree(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    _save(outside, "x.png", Image.fromarray(_noise(7)))
    _save(outside, "birds/b.png", Image.fromarray(_noise(8)))
    (root / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling
    (root / "cat" / ".cache-link").symlink_to(tmp_path / "nowhere")  # hidden, dangling: DVC hashes it
    (root / "dog" / "outside.png").symlink_to(outside / "x.png")  # out of the dataset
    (root / "bird").symlink_to(outside / "birds", target_is_directory=True)  # a class folder out of it
    (root / "dog" / "loop.png").symlink_to(root / "dog" / "loop.png")  # a loop
    with open(os.path.join(os.fsencode(root / "cat"), b"caf\xe9.png"), "wb") as handle:  # Latin-1, not UTF-8
        handle.write(_encoded(Image.fromarray(_noise(9)), "PNG"))
    with pytest.raises(ValueError) as error:
        build_manifest(DataParams(source=str(root), bad_images="skip"), progress=False)
    lines = str(error.value).splitlines()
    assert lines[0].startswith("6 path(s) under ") and "cannot be used as they are" in lines[0]
    assert sorted(line.strip().split(": ", 1)[0] for line in lines[1:]) == sorted(
        ["bird", "b'cat/caf\\xe9.png'", "cat/.cache-link", "cat/gone.png", "dog/loop.png", "dog/outside.png"]
    )
    assert f"dog/outside.png: leads out of the dataset folder (to {outside / 'x.png'})" in str(error.value)
    assert "cat/gone.png: a dangling symbolic link" in str(error.value)


def test_a_link_to_a_file_inside_the_dataset_is_followed(tmp_path):
    root = _small_tree(tmp_path / "data")
    (root / "dog" / "alias.png").symlink_to(root / "dog" / "img_0.png")
    (root / "dog" / "more").symlink_to(root / "cat", target_is_directory=True)  # a folder link: not descended
    records, report = build_manifest(DataParams(source=str(root)), progress=False)
    assert (
        len(records) == 12 and report.duplicates["removed_within_split"] + report.duplicates["removed_cross_split"] == 1
    )


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(tmp_path, policy):
    from conftest import write_bomb_png

    root = _small_tree(tmp_path / "data")
    write_bomb_png(root / "cat" / "bomb.png", 8000, 8000)  # 64 MP: 192 MB as RGB, ~70 KB on disk
    params = DataParams(source=str(root), bad_images=policy)
    if policy == "error":
        with pytest.raises(
            BadImageError,
            match=r"bomb.png: declares 8000×8000 = 64.0 megapixels, more than the "
            r"limit of 50 \(data.max_image_pixels",
        ):
            build_manifest(params, progress=False)
        return
    records, report = build_manifest(params, progress=False)
    assert len(records) == 12 and len(report.bad_images_skipped) == 1
    records, _ = build_manifest(DataParams(source=str(root), max_image_pixels=64_000_000), progress=False)
    assert len(records) == 13
