"""Decoding one image file into RGB pixels, the same way everywhere.

prepare decodes every image once with :func:`decode_image` to prove it can be
read; extract and ``shoulders predict`` decode with the same function, so an
image that passed prepare is read identically later.

Handled: JPEG (CMYK included), PNG (palette, grey+alpha, RGBA, 16-bit), BMP,
GIF (first frame of an animation), WebP; EXIF orientation is applied. Large
photos (a 6000×4000 camera image is 24 megapixels) decode normally. A file
whose header declares more pixels than ``max_pixels`` (``data.max_image_pixels``,
50 megapixels by default) is refused from its header, before any pixel is
decoded: a 500 KB PNG can declare 13000×13000 and would take gigabytes once
decoded. PIL's own decompression-bomb guard stays on above that (more than
twice ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels, is refused whatever
the limit).

Baseline and progressive JPEGs in colour or grey that need no DCT-domain
reduction are decoded by libjpeg-turbo straight into a numpy array
(``simplejpeg``): about half PIL's time for a 500×375 photo, since PIL's
decode is followed by two copies (its ``tobytes`` and the EXIF transpose). The
pixels are the same to the bit (the same library with the same settings: slow
integer IDCT, fancy upsampling; ``tests/test_images.py`` checks every
subsampling, grey, progressive, every EXIF orientation and real photos).
Anything else — CMYK, a reduced (draft) decode, a file libjpeg-turbo only
warns about — goes through PIL, which decides what is decodable, so the set of
accepted files is PIL's.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import simplejpeg
except ImportError:  # a platform without its wheel: PIL decodes everything, to the same pixels
    simplejpeg = None

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
# Files and folders that operating systems and tools drop into datasets; never data.
# (__MACOSX holds the resource forks of a zip made on a Mac, @eaDir a Synology NAS's thumbnails.)
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "__macosx", "@eadir"})


ORIENTATION = 0x0112  # the EXIF tag
# What each EXIF orientation's transpose does to (height, width, channels) pixels (1: nothing).
_TURNS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a),
}


class BadImageError(ValueError):
    """A file with an image extension that cannot be decoded."""


def is_image_name(path: Path) -> bool:
    """True for a visible file whose extension (any case) is a supported image type."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def is_junk_name(path: Path) -> bool:
    """True for hidden files and OS clutter, which are ignored silently."""
    return path.name.startswith(".") or path.name.lower() in JUNK_NAMES


def decode_image(
    path: Path | str, *, sha256: str | None = None, target: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Decode an image file to RGB pixels.

    Parameters
    ----------
    path : path-like
    target : int, optional
        The side the pixels are for (a backbone's input size). A JPEG whose
        shorter side is at least twice ``target`` is then decoded in the DCT
        domain at the largest reduction (1/2, 1/4, 1/8) that keeps both sides
        at least ``target`` (PIL's ``draft``): several times faster, and the
        same pixels wherever the image is decoded for that size (extraction,
        the exported model's ``shoulders predict``).
    sha256 : str, optional
        The sha256 the file's bytes must have (what prepare recorded): its bytes
        are read once, hashed and decoded from memory, so features are never
        computed from other bytes than the ones their row is keyed by.
    max_pixels : int, optional
        Refuse an image whose header declares more than this many pixels
        (width × height) before decoding it; ``None``: PIL's guard only.

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8
        Upright (EXIF orientation applied), first frame for animations.

    Raises
    ------
    BadImageError
        If the file is not an image, is truncated or cannot be decoded, or its
        bytes are not the ones ``sha256`` names; the message names the file and the reason.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise BadImageError(f"{path}: cannot read it ({type(error).__name__}: {error})") from error
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BadImageError(
                f"{path}: its bytes changed since prepare read them (sha256 {actual[:12]}…, "
                f"expected {sha256[:12]}…); run `dvc repro` so that prepare sees the new file"
            )
    if not data:
        raise BadImageError(f"{path}: the file is empty (0 bytes), not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise BadImageError(
                    f"{path}: declares {width}×{height} = {width * height / 1e6:.1f} megapixels, more "
                    f"than the limit of {max_pixels / 1e6:g} (data.max_image_pixels; "
                    "`shoulders predict --max-pixels`); not decoded"
                )
            draft = target is not None and image.format == "JPEG" and min(image.size) >= 2 * target
            if image.format == "JPEG" and image.mode in ("RGB", "L") and not draft:
                pixels = _libjpeg_turbo(data)
                if pixels is not None:
                    return _upright(pixels, image.getexif().get(ORIENTATION, 1))
            image.seek(0)
            if draft:
                image.draft(image.mode, (target, target))
            image.load()  # decode everything now: truncation raises here, not later
            image = ImageOps.exif_transpose(image, in_place=True) or image
            return _to_rgb(image)
    except BadImageError:
        raise
    except UnidentifiedImageError as error:
        # PIL names the in-memory buffer, not the file: say what the file is instead.
        raise BadImageError(
            f"{path}: cannot decode image: not an image format Pillow reads ({len(data)} bytes, starting {data[:8]!r})"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise BadImageError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error


def _libjpeg_turbo(data: bytes) -> np.ndarray | None:
    """A colour or grey JPEG decoded by libjpeg-turbo to RGB as PIL decodes it; ``None``: let PIL decide.

    ``strict``: a warning (corrupt data libjpeg-turbo can read past, a
    truncated file) raises, and PIL then decodes or refuses the file.
    """
    if simplejpeg is None:
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except ValueError:
        return None


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels turned as ``ImageOps.exif_transpose`` turns their image for an EXIF ``orientation`` (1–8)."""
    turn = _TURNS.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):
        # 16-bit (or 32-bit integer) grey: scale to 8 bits, since convert("RGB") would clip at 255.
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if grey.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        grey = np.clip(np.rint(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(grey * 255.0 if grey.max(initial=0) <= 1.0 else grey), 0, 255)
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "P":
        # Palette images may carry transparency; go through RGBA to honour it.
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)
