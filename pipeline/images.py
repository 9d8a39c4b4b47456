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
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
# Files and folders that operating systems and tools drop into datasets; never data.
# (__MACOSX holds the resource forks of a zip made on a Mac, @eaDir a Synology NAS's thumbnails.)
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "__macosx", "@eadir"})


class BadImageError(ValueError):
    """A file with an image extension that cannot be decoded."""


def is_image_name(path: Path) -> bool:
    """True for a visible file whose extension (any case) is a supported image type."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def is_junk_name(path: Path) -> bool:
    """True for hidden files and OS clutter, which are ignored silently."""
    return path.name.startswith(".") or path.name.lower() in JUNK_NAMES


def decode_image(path: Path | str, *, sha256: Optional[str] = None, target: Optional[int] = None,
                 max_pixels: Optional[int] = None) -> np.ndarray:
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
    source = path
    if sha256 is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise BadImageError(f"{path}: cannot read it ({type(error).__name__}: {error})") from error
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BadImageError(f"{path}: its bytes changed since prepare read them (sha256 {actual[:12]}…, "
                                f"expected {sha256[:12]}…); run `dvc repro` so that prepare sees the new file")
        source = io.BytesIO(data)
    try:
        with Image.open(source) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise BadImageError(f"{path}: declares {width}×{height} = {width * height / 1e6:.1f} megapixels, more "
                                    f"than the limit of {max_pixels / 1e6:g} (data.max_image_pixels; "
                                    "`shoulders predict --max-pixels`); not decoded")
            image.seek(0)
            if target is not None and image.format == "JPEG" and min(image.size) >= 2 * target:
                image.draft(image.mode, (target, target))
            image.load()  # decode everything now: truncation raises here, not later
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as error:
        raise BadImageError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error


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
