"""Tests for pipeline.synthetic, the built-in generated dataset."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline import synthetic
from pipeline.synthetic import CLASS_NAMES, generate_dataset, render_image

# ../shared beside the repository root; the test that needs it is skipped without it.
MOBILENET_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/keras-models/mobilenet_2_5_224_tf_no_top.h5"


def _generate(root: Path, **overrides) -> list[Path]:
    kwargs = dict(classes=3, per_class=2, image_size=24, seed=0)
    kwargs.update(overrides)
    return generate_dataset(root, **kwargs)


def _render_sample(n_classes: int, per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n_classes * per_class, size, size, 3) as generate_dataset draws
    them for seed 0, and their labels (n_classes * per_class,)."""
    labels = np.repeat(np.arange(n_classes), per_class)
    indices = np.tile(np.arange(per_class), n_classes)
    rngs = [synthetic._image_rng(0, c, i) for c, i in zip(labels, indices)]
    images = [render_image(rng, c, image_size=size) for rng, c in zip(rngs, labels)]
    return np.stack(images), labels


def _linear_cv_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean 4-fold stratified accuracy of a standardised logistic regression."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(4, shuffle=True, random_state=0)
    return float(cross_val_score(model, features, labels, cv=folds).mean())


# --------------------------------------------------------------------------- rendering


def test_class_names_are_unique_folder_names():
    assert len(CLASS_NAMES) >= 6
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert all(re.fullmatch(r"[a-z]+", name) for name in CLASS_NAMES)


@pytest.mark.parametrize("image_size", [16, 37, 64])
@pytest.mark.parametrize("label", range(len(CLASS_NAMES)))
def test_render_image_shape_and_dtype(image_size, label):
    image = render_image(np.random.default_rng(0), label, image_size=image_size)
    assert image.shape == (image_size, image_size, 3)
    assert image.dtype == np.uint8
    assert image.std() > 5  # not a blank canvas


def test_render_image_is_a_function_of_the_generator_state():
    first = render_image(np.random.default_rng(7), 2, image_size=32)
    again = render_image(np.random.default_rng(7), 2, image_size=32)
    other = render_image(np.random.default_rng(8), 2, image_size=32)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 10


@pytest.mark.parametrize(
    "label, image_size, message",
    [
        (-1, 32, "Received: label=-1"),
        (len(CLASS_NAMES), 32, f"Received: label={len(CLASS_NAMES)}"),
        (0, 15, "Received: image_size=15"),
    ],
)
def test_render_image_rejects_bad_arguments(label, image_size, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_image(np.random.default_rng(0), label, image_size=image_size)


# --------------------------------------------------------------------------- dataset files


def test_generate_dataset_writes_an_image_folder_tree(tmp_path):
    root = tmp_path / "new" / "synthetic"  # parents are created too
    paths = _generate(root, classes=3, per_class=2, image_size=24)

    expected = sorted(root / c / f"{c}_{i:04d}.png" for c in CLASS_NAMES[:3] for i in range(2))
    assert paths == expected
    assert sorted(p.name for p in root.iterdir()) == sorted(CLASS_NAMES[:3])
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (24, 24))


def test_generate_dataset_is_byte_for_byte_deterministic(tmp_path):
    first = _generate(tmp_path / "a", seed=3)
    again = _generate(tmp_path / "b", seed=3)
    other = _generate(tmp_path / "c", seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert all(p.read_bytes() != q.read_bytes() for p, q in zip(first, other))


def test_an_image_does_not_depend_on_per_class_or_classes(tmp_path):
    small = _generate(tmp_path / "small", classes=2, per_class=2)
    large = _generate(tmp_path / "large", classes=4, per_class=5)
    large_bytes = {p.relative_to(tmp_path / "large"): p.read_bytes() for p in large}
    for path in small:
        assert path.read_bytes() == large_bytes[path.relative_to(tmp_path / "small")]


def test_images_match_render_image_with_the_documented_seeding(tmp_path):
    (path,) = _generate(tmp_path, classes=2, per_class=1, image_size=20, seed=11)[1:]
    rng = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(1, 0)))
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), render_image(rng, 1, image_size=20))


def test_a_rerun_replaces_the_previous_dataset(tmp_path):
    _generate(tmp_path, classes=4, per_class=3)
    paths = _generate(tmp_path, classes=2, per_class=1)
    on_disk = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == paths
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CLASS_NAMES[:2])


@pytest.mark.parametrize(
    "foreign, reported",
    [
        ("notes.txt", "notes.txt"),
        ("holiday/photo.jpg", "holiday"),
        (f"{CLASS_NAMES[0]}/photo.jpg", f"{CLASS_NAMES[0]}/photo.jpg"),
        (f"{CLASS_NAMES[0]}/{CLASS_NAMES[1]}_0000.png",) * 2,  # another class's name
    ],
)
def test_a_folder_with_other_files_is_never_wiped(tmp_path, foreign, reported):
    _generate(tmp_path)
    stray = tmp_path / foreign
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"keep me")
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(ValueError, match=re.escape(f"({reported})")):
        _generate(tmp_path, per_class=1)
    assert sorted(tmp_path.rglob("*")) == before
    assert stray.read_bytes() == b"keep me"


def test_a_symlinked_class_folder_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / f"{CLASS_NAMES[0]}_0000.png"
    victim.write_bytes(b"not ours")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / CLASS_NAMES[0], target_is_directory=True)

    with pytest.raises(ValueError, match="refusing to delete"):
        _generate(root)
    assert victim.read_bytes() == b"not ours"


def test_root_that_is_a_file_is_rejected(tmp_path):
    root = tmp_path / "file"
    root.write_text("x")
    with pytest.raises(ValueError, match=re.escape(f"Received: root={str(root)!r}")):
        _generate(root)
    assert root.read_text() == "x"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"classes": 1}, ["classes must be an integer >= 2", "Received: classes=1"]),
        ({"classes": 2.0}, ["Received: classes=2.0"]),
        (
            {"classes": len(CLASS_NAMES) + 1},
            [f"at most {len(CLASS_NAMES)}", f"Received: classes={len(CLASS_NAMES) + 1}"],
        ),
        ({"per_class": 0}, ["per_class must be an integer >= 1", "Received: per_class=0"]),
        ({"image_size": 15}, ["image_size must be an integer >= 16", "Received: image_size=15"]),
        ({"seed": -1}, ["seed must be an integer >= 0", "Received: seed=-1"]),
    ],
)
def test_generate_dataset_validates_arguments(tmp_path, overrides, expected):
    with pytest.raises(ValueError) as raised:
        _generate(tmp_path / "out", **overrides)
    for part in expected:
        assert part in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_progress_bar_goes_to_stderr_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    _generate(tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    _generate(tmp_path / "log", progress=True)  # stderr a file: a short job writes no progress line
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _generate(tmp_path / "loud", progress=True)
    assert "6/6" in capsys.readouterr().err


# --------------------------------------------------------------------------- difficulty


def _colour_statistics(images: np.ndarray) -> np.ndarray:
    """Per-channel mean and std, shape (n_images, 6), of images (n, h, w, 3)."""
    pixels = images.astype(np.float64)
    return np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))], axis=1)


def _edge_statistics(images: np.ndarray) -> np.ndarray:
    """Rotation-invariant edge statistics, shape (n_images, 14), of images (n, h, w, C).

    The magnitude-weighted histogram of edge orientations (mod pi) peaks at a
    polygon's sides; the magnitudes of its Fourier coefficients do not change
    under rotation and reflect the symmetry order (3 for a triangle, 5 for a
    star, flat for a ring). Edge densities at five thresholds add coarse size.
    """
    grey = images.astype(np.float64).mean(axis=-1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    bins = (np.mod(np.arctan2(gy, gx), np.pi) / np.pi * 36).astype(int) % 36
    hist = np.stack([np.bincount(b.ravel(), weights=m.ravel(), minlength=36) for b, m in zip(bins, magnitude)])
    hist /= hist.sum(axis=1, keepdims=True)
    harmonics = np.abs(np.fft.rfft(hist, axis=1))[:, 1:10]
    density = np.stack([(magnitude > t).mean(axis=(1, 2)) for t in (5, 10, 20, 40, 80)], axis=1)
    return np.concatenate([harmonics, density], axis=1)


N_CLASSES, PER_CLASS, SIZE = 6, 60, 48


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """Rendered images (360, 48, 48, 3) and their labels (360,)."""
    return _render_sample(N_CLASSES, PER_CLASS, SIZE)


def test_colour_statistics_are_near_chance(sample):
    images, labels = sample
    # Chance is 1/6; a generator whose colours or object sizes leaked the class
    # would score far above this.
    assert _linear_cv_accuracy(_colour_statistics(images), labels) < 0.27


def test_edge_statistics_see_clean_shapes_but_not_the_dataset(sample):
    images, labels = sample
    # Control: on the bare shapes (white on black, centred) the same statistic
    # does separate the classes, so a low score below is the nuisances' doing.
    rng = np.random.default_rng(0)
    centre = np.array([SIZE / 2, SIZE / 2])
    shapes = [synthetic._move(synthetic._shape(rng, c, 0.25 * SIZE**2), centre) for c in labels]
    clean = np.stack([synthetic._mask(parts, (SIZE, SIZE)) for parts in shapes])
    assert _linear_cv_accuracy(_edge_statistics(clean * 255), labels) >= 0.7
    assert _linear_cv_accuracy(_edge_statistics(images), labels) < 0.5


# --------------------------------------------------------------------------- real weights


@pytest.mark.real_weights
def test_pretrained_backbone_beats_random_init_by_a_clear_margin():
    if not MOBILENET_WEIGHTS.is_file():
        pytest.skip(f"needs {MOBILENET_WEIGHTS}")
    import keras
    import tensorflow as tf

    images, labels = _render_sample(6, 60, 80)
    batch = keras.applications.mobilenet.preprocess_input(
        tf.image.resize(images.astype(np.float32), (224, 224), method="bilinear")
    )

    def features(weights) -> np.ndarray:
        keras.utils.set_random_seed(0)
        base = keras.applications.MobileNet(
            alpha=0.25, include_top=False, input_shape=(224, 224, 3), weights=weights, pooling="avg"
        )
        return base.predict(batch, batch_size=60, verbose=0)

    pretrained = _linear_cv_accuracy(features(str(MOBILENET_WEIGHTS)), labels)
    random_init = _linear_cv_accuracy(features(None), labels)
    assert pretrained >= 0.7, (pretrained, random_init)
    assert pretrained - random_init >= 0.15, (pretrained, random_init)
