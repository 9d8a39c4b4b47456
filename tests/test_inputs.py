"""The input pipeline every runtime reads: TensorFlow's resize arithmetic, JPEG drafts, order, bounded memory."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

from pipeline.extraction.augmentation import augment_image, view_seed
from pipeline.extraction.inputs import image_batches, labelled_batches, load_and_resize, resize_bilinear
from pipeline.images import BadImageError, decode_image


@pytest.mark.parametrize(
    "shape, size",
    [((64, 64), 224), ((375, 500), 224), ((300, 200), 96), ((31, 47), 32), ((224, 224), 224), ((1000, 750), 240)],
)
def test_resize_is_tensorflows_bilinear_to_the_bit(shape, size):
    import tensorflow as tf

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = tf.image.resize(pixels, (size, size), method="bilinear").numpy()
    np.testing.assert_array_equal(resize_bilinear(pixels, size), expected)


def _jpeg(path, size, seed=0):
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3)), np.ones((16, 16, 1)))
    Image.fromarray(smooth[: size[1], : size[0]].astype(np.uint8)).save(path, quality=92)
    return path


def test_large_jpegs_are_decoded_in_the_dct_domain_for_their_target(tmp_path):
    big = _jpeg(tmp_path / "big.jpg", (1000, 800))
    small = _jpeg(tmp_path / "small.jpg", (400, 300))
    assert decode_image(big).shape == (800, 1000, 3)
    drafted = decode_image(big, target=224)
    assert drafted.shape == (400, 500, 3)  # 1/2: the largest reduction keeping both sides >= 224
    assert decode_image(small, target=224).shape == (300, 400, 3)  # under twice the target: decoded whole
    png = tmp_path / "big.png"
    Image.open(big).save(png)
    assert decode_image(png, target=224).shape == (800, 1000, 3)  # only JPEGs have drafts
    # The pixels differ from a full decode (that is the point) but not by much once resized.
    full = resize_bilinear(decode_image(big), 224)
    assert np.abs(load_and_resize(str(big), 224) - full).mean() < 8.0


def test_batches_come_in_order_whole_and_checked(tmp_path):
    paths = [str(p) for p in write_image_folder(tmp_path / "images", classes=2, per_class=5, size=(20, 24))]
    batches = list(image_batches(paths, size=16, batch_size=4))
    assert [b.shape for b in batches] == [(4, 16, 16, 3), (4, 16, 16, 3), (2, 16, 16, 3)]
    np.testing.assert_array_equal(np.concatenate(batches), np.stack([load_and_resize(p, 16) for p in paths]))
    hashes = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    assert len(list(image_batches(paths, size=16, batch_size=4, sha256=hashes))) == 3
    hashes[3] = "0" * 64
    with pytest.raises(BadImageError, match=r"img_003.png: its bytes changed since prepare read them"):
        list(image_batches(paths, size=16, batch_size=4, sha256=hashes))


def test_reused_batch_arrays_hold_the_same_pixels_and_are_recycled_only_after_use(tmp_path):
    paths = [str(p) for p in write_image_folder(tmp_path / "images", classes=2, per_class=11, size=(30, 26))]
    fresh = [b.copy() for b in image_batches(paths, size=16, batch_size=3)]
    seen, ids = [], []
    for batch in image_batches(paths, size=16, batch_size=3, ahead=1, reuse=True):
        seen.append(batch.copy())  # a reused batch is valid until the next one is asked for
        ids.append(id(batch.base if batch.base is not None else batch))
    assert len(seen) == len(fresh) == 8
    for a, b in zip(seen, fresh):
        np.testing.assert_array_equal(a, b)
    assert len(set(ids)) <= 1 + 2  # ahead + 2 arrays in the ring
    squares = resize_bilinear(decode_image(paths[0]), 16, out=np.zeros((16, 16, 3), np.float32))
    np.testing.assert_array_equal(squares, resize_bilinear(decode_image(paths[0]), 16))


def test_decoding_runs_a_bounded_window_ahead(tmp_path):
    paths = [str(p) for p in write_image_folder(tmp_path / "images", classes=1, per_class=40, size=(20, 20))]
    seen, lock = [], threading.Lock()

    def count(index, image):
        with lock:
            seen.append(index)
        return image

    stream = image_batches(paths, size=8, batch_size=4, transform=count, ahead=2)
    next(stream)
    assert len(seen) <= 4 * 2 + 4 + 4  # the window (ahead + one batch), plus what was in flight
    stream.close()


def test_views_depend_on_seed_view_and_image_only():
    image = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    ops = {"flip": "horizontal", "rotation": 0.1, "zoom": 0.2, "translation": 0.1, "contrast": 0.3}
    a = augment_image(image, ops, view_seed(0, 0, "ab"))
    np.testing.assert_array_equal(a, augment_image(image, ops, view_seed(0, 0, "ab")))
    assert not np.array_equal(a, augment_image(image, ops, view_seed(0, 1, "ab")))
    assert not np.array_equal(a, augment_image(image, ops, view_seed(1, 0, "ab")))
    assert not np.array_equal(a, image) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 255
    flips = {augment_image(image, {"flip": "horizontal"}, view_seed(0, v, "x")).tobytes() for v in range(16)}
    assert flips == {image.tobytes(), image[:, ::-1].tobytes()}  # flipped or not, both seen


def test_fine_tuning_batches_run_without_the_autotuner(tmp_path):
    # TensorFlow 2.21's autotuner stalled iterator teardown ~5 s per split (pipeline.tfdata).
    paths = [str(p) for p in write_image_folder(tmp_path / "images", classes=2, per_class=3, size=(20, 24))]
    dataset = labelled_batches(paths, [0] * len(paths), size=16, batch_size=4)
    assert dataset.options().autotune.enabled is False
    images = np.concatenate([x.numpy() for x, _ in dataset])
    np.testing.assert_array_equal(images, np.stack([load_and_resize(p, 16) for p in paths]))


def test_a_preset_resize_matches_keras_and_leaves_the_active_backend_intact():
    """A non-default resize (a preset converter's) is Keras' numpy resize; importing it must not shadow
    ``keras.src.backend.numpy``, the active backend's ops that Keras and keras_hub read by that name."""
    import keras
    import keras.src.backend as backends

    from pipeline.backbones.registry import Resize
    from pipeline.extraction.inputs import resize_image

    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    how = Resize(interpolation="bicubic", antialias=True)
    got = resize_image(pixels, 16, how)
    expected = keras.ops.convert_to_numpy(
        keras.layers.Resizing(16, 16, interpolation="bicubic", antialias=True)(pixels[None].astype(np.float32))
    )[0]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert backends.numpy.__name__ == f"keras.src.backend.{keras.backend.backend()}.numpy"
    assert keras.ops.zeros((2,)).shape == (2,)
