"""The built-in dataset: procedurally generated shapes in clutter.

``generate_dataset`` writes an ImageFolder tree ``root/<class>/<class>_<i>.png``
so that the default ``dvc repro`` needs no download. Each class is a shape
category (ring, square, triangle, ...). One object of that category is drawn
per image, and everything else about the image is random and independent of
the class:

* the object's position, area (normalised per class, so every category covers
  the same range of pixels), rotation and aspect ratio;
* its fill (flat colour, gradient, stripes or colour blobs) and colour, and
  whether it has an outline;
* the background texture (gradient, stripes, checker or colour blobs, often two
  of them blended) and its colours;
* clutter: smaller shapes of the *other* categories, some partly out of frame
  and some in front of the object, plus random strokes;
* blur and pixel noise.

Why it is hard: colour, brightness, contrast and object size carry no
information about the label, and the clutter puts edges and corners of every
orientation into every image, so global statistics (colour moments,
gradient-orientation histograms) are close to chance. What separates the
classes is the outline of the largest coherent object, which needs features
that group edges into parts -- what ImageNet-pretrained backbones learn and
randomly initialised ones do not have. ``benchmarks/synthetic_separability.py``
measures that gap.

Every image has its own random generator, seeded from ``(seed, class, index)``
with :class:`numpy.random.SeedSequence`, so an image does not depend on how
many images or classes are generated, and PNG output is byte-for-byte
reproducible.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "ring",
    "triangle",
    "star",
    "cross",
    "crescent",
    "hexagon",
    "arrow",
    "square",
)

# Shapes are drawn at this multiple of the output size and box-filtered down,
# which anti-aliases their edges (PIL's polygon fill does not).
_SUPERSAMPLE = 2
# Object area as a fraction of the image area; drawn uniformly.
_OBJECT_AREA = (0.07, 0.18)
# Clutter shape area as a fraction of the object's area; small enough that the
# object stays the largest shape in the image.
_CLUTTER_AREA = (0.12, 0.4)
_CLUTTER_COUNT = (2, 6)  # inclusive
_CLUTTER_IN_FRONT = 0.3  # probability that a clutter shape is drawn over the object
_STROKE_COUNT = (1, 5)  # inclusive
_NOISE_STD = (3.0, 12.0)  # grey levels
_BLUR_RADIUS = (0.0, 0.8)  # output pixels
# Minimum distance in RGB between object and background mean colour, so the
# object is visible; below it the label would be noise for any model.
_MIN_CONTRAST = 70.0

_PNG_NAME = re.compile(r"^(?P<cls>[a-z]+)_\d{4,}\.png$")


# --------------------------------------------------------------------------- shapes


def _circle(radius: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _regular(n: int, radius: float = 1.0, jitter: float = 0.0, rng=None) -> np.ndarray:
    t = np.pi / 2 + 2 * np.pi * np.arange(n) / n
    if jitter:
        t = t + rng.uniform(-jitter, jitter, n)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _shape_parts(rng: np.random.Generator, label: int) -> list[tuple[np.ndarray, int]]:
    """Polygons of one shape of category ``label`` in its own unit frame.

    Returns
    -------
    list of (ndarray of shape (n_vertices, 2), int)
        Polygons drawn in order with fill 255 (add) or 0 (cut). A cut always lies
        inside the polygons before it, so the shape's area is the signed sum.
    """
    name = CLASS_NAMES[label]
    if name == "ring":
        return [(_circle(1.0), 255), (_circle(rng.uniform(0.45, 0.65)), 0)]
    if name == "square":
        return [(_regular(4, jitter=np.deg2rad(4), rng=rng), 255)]
    if name == "triangle":
        return [(_regular(3, jitter=np.deg2rad(8), rng=rng), 255)]
    if name == "star":
        outer = _regular(5)
        inner = _regular(5, radius=rng.uniform(0.38, 0.5)) @ _rotation(np.pi / 5)
        star = np.empty((10, 2))
        star[0::2], star[1::2] = outer, inner
        return [(star, 255)]
    if name == "cross":
        w = rng.uniform(0.22, 0.34)
        arm = np.array([[w, w], [1, w], [1, -w], [w, -w]])
        quarters = [arm @ _rotation(k * np.pi / 2) for k in range(4)]
        return [(np.concatenate(quarters), 255)]
    if name == "crescent":
        # Unit disc minus a disc of radius rc centred at (d, 0); the two circles
        # meet at (x, +-y), and d - rc > -1 keeps the crescent in one piece.
        d, rc = rng.uniform(0.35, 0.55), rng.uniform(0.75, 0.9)
        x = (1 + d * d - rc * rc) / (2 * d)
        y = np.sqrt(1 - x * x)
        phi, psi = np.arctan2(y, x), np.arctan2(y, x - d)
        outer = np.linspace(phi, 2 * np.pi - phi, 40)
        inner = np.linspace(2 * np.pi - psi, psi, 40)
        pts = np.concatenate(
            [
                np.stack([np.cos(outer), np.sin(outer)], axis=1),
                np.stack([d + rc * np.cos(inner), rc * np.sin(inner)], axis=1),
            ]
        )
        return [(pts, 255)]
    if name == "arrow":
        s, h, hw = rng.uniform(0.16, 0.26), rng.uniform(-0.1, 0.2), rng.uniform(0.55, 0.75)
        pts = [[-1, s], [h, s], [h, hw], [1, 0], [h, -hw], [h, -s], [-1, -s]]
        return [(np.array(pts, dtype=float), 255)]
    if name == "hexagon":
        return [(_regular(6, jitter=np.deg2rad(4), rng=rng), 255)]
    raise AssertionError(f"no drawing for class {name!r}")  # CLASS_NAMES out of sync


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, s], [-s, c]])


def _area(parts: list[tuple[np.ndarray, int]]) -> float:
    total = 0.0
    for pts, fill in parts:
        x, y = pts[:, 0], pts[:, 1]
        a = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        total += a if fill else -a
    return total


def _shape(rng: np.random.Generator, label: int, area_px: float) -> list[tuple[np.ndarray, int]]:
    """One shape of ``label`` with area ``area_px`` (pixels²), stretched and
    rotated at random, centred on the origin, as a list of (polygon, fill)."""
    parts = _shape_parts(rng, label)
    stretch = np.diag([rng.uniform(0.85, 1.15), 1.0])
    # The stretch changes the area by its determinant, which _area sees.
    parts = [(pts @ stretch, fill) for pts, fill in parts]
    scale = np.sqrt(area_px / _area(parts))
    turn = _rotation(rng.uniform(0, 2 * np.pi))
    return [(pts @ turn * scale, fill) for pts, fill in parts]


def _move(parts, offset: np.ndarray) -> list[tuple[np.ndarray, int]]:
    return [(pts + offset, fill) for pts, fill in parts]


def _mask(parts, shape: tuple[int, int], outline: int = 0) -> np.ndarray:
    """Rasterise polygons to a float mask of shape (*shape, 1) in [0, 1]; with
    ``outline`` > 0 only their outlines, that many pixels wide."""
    img = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(img)
    for pts, fill in parts:
        xy = [tuple(p) for p in pts]
        if outline:
            draw.polygon(xy, outline=255, width=outline)
        else:
            draw.polygon(xy, fill=fill)
    return np.asarray(img, dtype=np.float32)[..., None] / 255.0


# --------------------------------------------------------------------------- textures


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _texture(rng: np.random.Generator, shape: tuple[int, int], base: np.ndarray, width: int) -> np.ndarray:
    """A random texture of shape (*shape, 3), float32 in [0, 255], whose colours
    are drawn around ``base`` (shape (3,)) and whose stripes and checks are sized
    relative to ``width``, the canvas side, whatever the area it fills."""
    kind = rng.choice(["flat", "gradient", "stripes", "checker", "blobs"], p=[0.2, 0.2, 0.25, 0.15, 0.2])
    h, w = shape
    c0 = base
    c1 = np.clip(base + rng.normal(0, 70, 3), 0, 255).astype(np.float32)
    if kind == "flat":
        return np.broadcast_to(c0, (h, w, 3))
    if kind == "blobs":
        cells = rng.integers(3, 9)
        low = np.clip(base + rng.normal(0, 60, (cells, cells, 3)), 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None] / np.float32(width)
    xx = np.arange(w, dtype=np.float32)[None, :] / np.float32(width)
    theta = rng.uniform(0, np.pi)
    u = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
    if kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == "stripes":
        period = rng.uniform(0.04, 0.2)
        wave = np.sin(np.float32(2 * np.pi / period) * u)
        # Soft or hard stripes: the sharpness sets how much edge energy they add.
        t = 0.5 + 0.5 * np.tanh(np.float32(rng.uniform(0.5, 8.0)) * wave)
    else:  # checker
        v = yy * np.float32(np.cos(theta)) - xx * np.float32(np.sin(theta))
        cell = rng.uniform(0.06, 0.2)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return c0 + t[..., None] * (c1 - c0)


def _background(rng: np.random.Generator, width: int) -> np.ndarray:
    canvas = _texture(rng, (width, width), _colour(rng), width)
    if rng.random() < 0.5:
        alpha = rng.uniform(0.25, 0.6)
        canvas = (1 - alpha) * canvas + alpha * _texture(rng, (width, width), _colour(rng), width)
    # A copy: flat textures are read-only broadcasts, and shapes are pasted in place.
    return np.array(canvas, dtype=np.float32)


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray) -> np.ndarray:
    colour = _colour(rng)
    for _ in range(20):
        if np.linalg.norm(colour - against) >= _MIN_CONTRAST:
            break
        colour = _colour(rng)
    return colour


# --------------------------------------------------------------------------- scenes


def _paint(rng, canvas, parts, colour) -> np.ndarray:
    """Composite one shape filled with a texture around ``colour`` onto
    ``canvas`` (shape (width, width, 3)), sometimes with an outline."""
    width = canvas.shape[0]
    pts = np.concatenate([p for p, _ in parts])
    # Work in the shape's bounding box only; the rest of the canvas is untouched.
    x0, y0 = np.clip(np.floor(pts.min(axis=0)).astype(int) - 4, 0, width)
    x1, y1 = np.clip(np.ceil(pts.max(axis=0)).astype(int) + 4, 0, width)
    shifted = [(p - [x0, y0], fill) for p, fill in parts]
    box = (y1 - y0, x1 - x0)
    fill = _texture(rng, box, colour, width)
    outline = int(rng.integers(1, 4)) * _SUPERSAMPLE if rng.random() < 0.35 else 0
    edge_colour = _colour(rng)
    if box[0] == 0 or box[1] == 0:
        return canvas
    region = canvas[y0:y1, x0:x1]
    mask = _mask(shifted, box)
    region = region * (1 - mask) + fill * mask
    if outline:
        edge = _mask(shifted, box, outline=outline)
        region = region * (1 - edge) + edge_colour * edge
    canvas[y0:y1, x0:x1] = region
    return canvas


def render_image(rng: np.random.Generator, label: int, *, image_size: int) -> np.ndarray:
    """Draw one image of class ``label``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness; the image is a function of its state.
    label : int
        Index into :data:`CLASS_NAMES`.
    image_size : int
        Side of the square image in pixels, at least 16.

    Returns
    -------
    ndarray of shape (image_size, image_size, 3), dtype uint8
        The RGB image.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES) - 1}]. Received: label={label!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16. Received: image_size={image_size!r}")
    width = image_size * _SUPERSAMPLE
    canvas = _background(rng, width)

    area = rng.uniform(*_OBJECT_AREA) * width * width
    obj = _shape(rng, label, area)
    # The whole object stays in frame: a cropped triangle reads as a quadrilateral.
    pts = np.concatenate([p for p, _ in obj])
    low, high = -pts.min(axis=0), width - pts.max(axis=0)
    obj = _move(obj, rng.uniform(np.minimum(low, high), np.maximum(low, high)))

    others = [k for k in range(len(CLASS_NAMES)) if k != label]
    n_clutter = int(rng.integers(_CLUTTER_COUNT[0], _CLUTTER_COUNT[1] + 1))
    in_front = rng.random(n_clutter) < _CLUTTER_IN_FRONT
    clutter = [
        _move(_shape(rng, int(rng.choice(others)), rng.uniform(*_CLUTTER_AREA) * area), rng.uniform(0, width, 2))
        for _ in range(n_clutter)
    ]
    bg_mean = canvas.reshape(-1, 3).mean(axis=0)
    for parts in [c for c, front in zip(clutter, in_front) if not front]:
        canvas = _paint(rng, canvas, parts, _colour(rng))
    canvas = _paint(rng, canvas, obj, _contrasting_colour(rng, bg_mean))
    for parts in [c for c, front in zip(clutter, in_front) if front]:
        canvas = _paint(rng, canvas, parts, _colour(rng))

    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(_STROKE_COUNT[0], _STROKE_COUNT[1] + 1))):
        ends = [tuple(p) for p in rng.uniform(0, width, (2, 2))]
        fill = tuple(int(c) for c in _colour(rng))
        draw.line(ends, fill=fill, width=int(rng.integers(1, 3)) * _SUPERSAMPLE)

    img = img.resize((image_size, image_size), Image.BOX)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*_BLUR_RADIUS)))
    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels + rng.normal(0, rng.uniform(*_NOISE_STD), pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
