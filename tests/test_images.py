"""Decoding every kind of image file people have, the same way in every stage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset.sources import inspect_image
from pipeline.images import BadImageError, decode_image, is_image_name, is_junk_name


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


@pytest.mark.parametrize(
    "name, content",
    [
        ("text.jpg", b"this is not an image"),
        ("empty.png", b""),
    ],
)
def test_non_images_are_refused_by_name(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=name):
        decode_image(path)


@pytest.mark.parametrize("fmt, name", [("JPEG", "cut.jpg"), ("PNG", "cut.png")])
def test_truncated_image_is_refused(tmp_path, rgb, fmt, name):
    buffer = io.BytesIO()
    Image.fromarray(np.tile(rgb, (10, 10, 1))).save(buffer, format=fmt)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImageError, match=name):
        decode_image(path)


def test_names():
    from pathlib import Path

    assert is_image_name(Path("a/B.JPG")) and is_image_name(Path("x.webp"))
    assert not is_image_name(Path(".hidden.jpg")) and not is_image_name(Path("notes.txt"))
    assert is_junk_name(Path("Thumbs.db")) and is_junk_name(Path(".DS_Store"))


def test_very_large_photo_decodes(tmp_path):
    # 24 megapixels, as a phone or camera takes them: well under PIL's decompression-bomb limit.
    ramp = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None].repeat(4000, 0).repeat(3, 2)
    path = _save(tmp_path / "big.jpg", Image.fromarray(ramp), quality=80)
    pixels = decode_image(path)
    assert pixels.shape == (4000, 6000, 3)
    assert pixels[:, :100].mean() < 10 and pixels[:, -100:].mean() > 245


def test_decompression_bomb_is_refused_by_name(tmp_path, rgb, monkeypatch):
    # A file claiming more than twice MAX_IMAGE_PIXELS is refused before its pixels are allocated.
    path = _save(tmp_path / "bomb.png", Image.fromarray(rgb))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    with pytest.raises(BadImageError, match=r"bomb\.png.*DecompressionBombError"):
        decode_image(path)


def test_one_pixel_image_decodes(tmp_path):
    pixels = decode_image(_save(tmp_path / "dot.png", Image.new("RGB", (1, 1), (10, 20, 30))))
    assert pixels.tolist() == [[[10, 20, 30]]]


def test_palette_with_transparency_and_grey_alpha_keep_their_colours(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 50, 25] + [0] * 762)
    pixels = decode_image(_save(tmp_path / "p.png", palette, transparency=0))
    assert pixels.shape == (4, 4, 3) and pixels[0, 0].tolist() == [200, 50, 25]
    grey_alpha = Image.fromarray(np.full((4, 4, 2), (90, 255), np.uint8), mode="LA")
    assert decode_image(_save(tmp_path / "la.png", grey_alpha))[0, 0].tolist() == [90, 90, 90]


@pytest.mark.parametrize(
    "name, fmt",
    [("A.JPG", "JPEG"), ("b.Png", "PNG"), ("c.JPEG", "JPEG"), ("d.GIF", "GIF"), ("e.WEBP", "WEBP"), ("f.BMP", "BMP")],
)
def test_upper_case_extensions_are_images(tmp_path, rgb, name, fmt):
    path = _save(tmp_path / name, Image.fromarray(rgb), format=fmt)
    assert is_image_name(path)
    assert decode_image(path).shape == (20, 30, 3)


@pytest.mark.parametrize("name", ["__MACOSX", "@eaDir", "desktop.ini", ".git", "._photo.jpg"])
def test_os_folders_and_files_are_junk(name):
    from pathlib import Path

    assert is_junk_name(Path(name))


def test_inspect_can_add_the_perceptual_hash(tmp_path, rgb):
    path = _save(tmp_path / "a.png", Image.fromarray(rgb))
    plain, hashed = inspect_image(path), inspect_image(path, with_phash=True)
    assert plain.phash is None and 0 <= hashed.phash < 2**64
    assert (plain.width, plain.height, plain.sha256) == (hashed.width, hashed.height, hashed.sha256)


def _pil_pixels(path):
    """What PIL alone makes of a file: the decoding every other path must equal."""
    from PIL import ImageOps

    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.fixture
def photo():
    from skimage import data

    return np.asarray(data.astronaut())[::3, ::2]  # 171×256, a real photograph's textures


@pytest.fixture
def jpeg_calls(monkeypatch):
    """The decodes libjpeg-turbo did directly (not handed to PIL), counted, so a test sees the fast path ran."""
    from pipeline import images

    assert images.simplejpeg is not None, "simplejpeg is a dependency: the fast path must be testable"
    calls = []
    original = images._libjpeg_turbo

    def counted(data):
        pixels = original(data)
        calls.append(pixels is not None)
        return pixels

    monkeypatch.setattr(images, "_libjpeg_turbo", counted)
    return calls


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_libjpeg_turbo_gives_pils_pixels_to_the_bit(tmp_path, photo, jpeg_calls, subsampling, progressive, mode):
    image = Image.fromarray(photo).convert(mode)
    path = _save(tmp_path / "p.jpg", image, quality=87, subsampling=subsampling, progressive=progressive)
    np.testing.assert_array_equal(decode_image(path), _pil_pixels(path))
    assert jpeg_calls == [True]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_as_pil_turns_it(tmp_path, photo, jpeg_calls, orientation):
    image = Image.fromarray(photo[:, :200])  # not square: a wrong turn changes the shape
    exif = image.getexif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "o.jpg", image, exif=exif, quality=90)
    pixels = decode_image(path)
    np.testing.assert_array_equal(pixels, _pil_pixels(path))
    assert pixels.flags.c_contiguous and jpeg_calls == [True]


def test_cmyk_draft_and_corrupt_jpegs_go_through_pil(tmp_path, photo, jpeg_calls):
    cmyk = _save(tmp_path / "c.jpg", Image.fromarray(photo).convert("CMYK"), quality=90)
    np.testing.assert_array_equal(decode_image(cmyk), _pil_pixels(cmyk))
    big = _save(tmp_path / "big.jpg", Image.fromarray(np.tile(photo, (2, 2, 1))), quality=90)  # 342×512
    with Image.open(big) as image:
        image.draft("RGB", (160, 160))
        drafted = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(decode_image(big, target=160), drafted)  # DCT-domain 1/2: PIL's draft
    data = bytearray(big.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # corrupt entropy-coded data: libjpeg-turbo warns
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(bytes(data))
    np.testing.assert_array_equal(decode_image(corrupt), _pil_pixels(corrupt))
    assert jpeg_calls == [False]  # only the corrupt file reached libjpeg-turbo, which handed it to PIL


def test_real_photos_decode_as_pil_decodes_them(jpeg_calls):
    from pathlib import Path

    signs = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "signs" / "train"
    if not signs.is_dir():
        pytest.skip(f"{signs} is not there (../shared, beside the project)")
    photos = sorted(signs.rglob("*.jpg"))[::40]
    for path in photos:
        np.testing.assert_array_equal(decode_image(path), _pil_pixels(path), err_msg=str(path))
    assert len(photos) >= 10 and all(jpeg_calls)
