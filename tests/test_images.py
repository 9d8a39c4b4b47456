"""Decoding every kind of image file people have, the same way in every stage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.images import BadImageError, decode_image, inspect_image, is_image_name, is_junk_name


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def test_rgb_png_round_trips(tmp_path, rgb):
    path = _save(tmp_path / "a.png", Image.fromarray(rgb))
    np.testing.assert_array_equal(decode_image(path), rgb)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_modes_decode_to_rgb(tmp_path, rgb, mode):
    image = Image.fromarray(rgb).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    pixels = decode_image(_save(tmp_path / f"a{suffix}", image))
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8


def test_cmyk_jpeg_colours_survive(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 220
    pixels = decode_image(_save(tmp_path / "cmyk.jpg", Image.fromarray(red).convert("CMYK"), quality=95))
    assert pixels[..., 0].mean() > 180 and pixels[..., 1].mean() < 60


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    pixels = decode_image(path)
    assert pixels.shape == (8, 64, 3)
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # a linear ramp, not saturated to white


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((10, 40, 3), np.uint8)
    wide[:, :20] = 255  # left half white
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    pixels = decode_image(path)
    assert pixels.shape == (40, 10, 3)  # upright: tall
    assert pixels[:20].mean() > 200 and pixels[20:].mean() < 50  # white half now on top
    info = inspect_image(path)
    assert (info.width, info.height) == (10, 40)


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 12), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    pixels = decode_image(path)
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50


@pytest.mark.parametrize("name, content", [
    ("text.jpg", b"this is not an image"),
    ("empty.png", b""),
])
def test_non_images_are_refused_by_name(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=name):
        decode_image(path)


def test_truncated_jpeg_is_refused(tmp_path, rgb):
    buffer = io.BytesIO()
    Image.fromarray(np.tile(rgb, (10, 10, 1))).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImageError, match="cut.jpg"):
        decode_image(path)


def test_names():
    from pathlib import Path

    assert is_image_name(Path("a/B.JPG")) and is_image_name(Path("x.webp"))
    assert not is_image_name(Path(".hidden.jpg")) and not is_image_name(Path("notes.txt"))
    assert is_junk_name(Path("Thumbs.db")) and is_junk_name(Path(".DS_Store"))
