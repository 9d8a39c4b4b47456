"""Thumbnails of the images people should look at, and contact sheets of them with captions (Pillow).

:func:`write_thumbnail` writes a small JPEG of one manifest image, named by
its content hash (so one image shown in several lists is written once), decoded
by :func:`pipeline.images.decode_image`, which checks the bytes against the
manifest's sha256 and refuses an image over the pixel limit. The Markdown
reports link those files; :func:`contact_sheet` lays thumbnails with their
captions on one JPEG, which ``dvc plots show`` shows as an image plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pipeline.images import decode_image
from pipeline.manifest import Record

#: Caption lines under each tile of a contact sheet, and their height in pixels.
CAPTION_LINES = 3
LINE_PX = 13


def thumbnail_name(record: Record) -> str:
    """File name of an image's thumbnail: its content hash, so it is the same wherever the image is listed."""
    return f"{record.sha256[:20]}.jpg"


def write_thumbnail(record: Record, folder: Path, size: int, max_pixels: int | None = None) -> Path:
    """A JPEG of at most ``size`` × ``size`` pixels of one image (kept if already written)."""
    path = Path(folder) / thumbnail_name(record)
    if not path.is_file():
        pixels = decode_image(record.path, sha256=record.sha256, target=size, max_pixels=max_pixels)
        image = Image.fromarray(pixels)
        if max(image.size) < size:
            # A small image (a 64-px tile) is enlarged to the tile: at its own size it is a speck on the page.
            scale = size / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
            )
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=85)
    return path


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=11)


def contact_sheet(
    tiles: Sequence[tuple[Path, Sequence[str]]], out: Path, *, size: int, title: str, empty: str, columns: int = 8
) -> Path:
    """One JPEG of thumbnails on a grid, each with up to :data:`CAPTION_LINES` lines of caption.

    Parameters
    ----------
    tiles : sequence of (thumbnail path, caption lines)
    out : Path
    size : int
        Side of a tile's picture, pixels.
    title : str
        Written across the top.
    empty : str
        Written instead of tiles when there are none (a sheet is always written: DVC plots need the file).
    """
    font = _font()
    # Tiles as wide as their longest caption line (class names are not cut), up to twice the picture's side.
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    longest = max((measure.textlength(line, font=font) for _, caption in tiles for line in caption), default=0)
    text_w = int(min(max(size + 8, longest + 2), 2 * size))
    tile_w, tile_h = text_w + 12, size + 8 + CAPTION_LINES * LINE_PX
    cols = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / cols) if tiles else 0
    header = 24
    width = max(cols * tile_w, 420)
    sheet = Image.new("RGB", (width, header + max(rows * tile_h, 30)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), title, fill="black", font=font)
    if not tiles:
        draw.text((6, header + 4), empty, fill="dimgray", font=font)
    for index, (thumb, caption) in enumerate(tiles):
        x, y = (index % cols) * tile_w + 6, header + (index // cols) * tile_h
        with Image.open(thumb) as picture:
            picture = picture.convert("RGB")
            sheet.paste(picture, (x + (text_w - picture.width) // 2, y + (size - picture.height) // 2))
        for line, text in enumerate(list(caption)[:CAPTION_LINES]):
            draw.text((x, y + size + 3 + line * LINE_PX), _fit(draw, text, font, text_w), fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, "JPEG", quality=88)
    return out


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
