"""The built-in dataset: procedurally generated shapes in clutter.

:func:`generate_dataset` writes an ImageFolder tree
``root/<class>/<class>_<i:04d>.png`` so that the default ``dvc repro`` needs no
download. Each class is a shape category (ring, triangle, star, ...). One object
of the image's category is drawn per image; everything else is random and
independent of the class:

* the object's position (always wholly in frame), area (normalised per category,
  so a star covers as many pixels as a hexagon), rotation and aspect ratio;
* its fill (flat, gradient, stripes, checker or colour blobs), its colour, and
  whether it has an outline of another colour;
* the background: one of the same textures in random colours, often two blended;
* clutter: 1-4 smaller shapes of the *other* categories anywhere, some cut by
  the frame, some over the object, and 1-3 random strokes;
* mild blur and Gaussian pixel noise.

Why it is hard: colour, brightness, contrast and object size carry no
information about the label, and textures and clutter put edges of every
orientation into every image, so global statistics are near chance (colour
moments ~17%, rotation-invariant edge-orientation statistics ~30%, chance
17% with 6 classes). What separates the classes is the outline of the largest
object, which takes features that group edges into parts: ImageNet-pretrained
MobileNet-0.25 with a linear head scores ~85% on the default dataset, the same
network randomly initialised ~22% (``benchmarks/synthetic_separability.py``).

Every image has its own generator, seeded from ``(seed, class, index)`` with
:class:`numpy.random.SeedSequence`, so an image depends neither on
``per_class`` nor on ``classes``. PNGs are written without metadata, so the
files are byte-for-byte reproducible (for given numpy and Pillow versions).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.cli.progress import progress_bar
from pipeline.config import add_check

logger = logging.getLogger(__name__)

# The first six are the default classes; they were picked to be told apart by
# outline alone (a square and a triangle, or an arrow and a triangle, are
# confused far more often once textured and cluttered).
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


def _check_classes(synthetic) -> None:
    # synthetic.classes in params.yaml, checked when params are parsed (pipeline.config.schema)
    if synthetic.classes > len(CLASS_NAMES):
        raise ValueError(
            f"synthetic.classes must be an integer from 2 to {len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)}). "
            f"Received: {synthetic.classes!r}"
        )


add_check("synthetic", _check_classes)

# Shapes are drawn at this multiple of the output size and box-filtered down,
# which anti-aliases their edges (PIL's polygon fill does not).
_SUPERSAMPLE = 2
# Object area as a fraction of the image area, drawn uniformly.
_OBJECT_AREA = (0.15, 0.35)
# Clutter area as a fraction of the object's: small enough that the object stays
# the largest shape. These four ranges set the difficulty; they were tuned so a
# pretrained backbone's linear head lands at 80-90%, not 100%.
_CLUTTER_AREA = (0.03, 0.12)
_CLUTTER_COUNT = (1, 4)  # inclusive
_CLUTTER_IN_FRONT = 0.1  # probability that a clutter shape is drawn over the object
_STROKE_COUNT = (1, 3)  # inclusive
_NOISE_STD = (3.0, 12.0)  # grey levels
_BLUR_RADIUS = (0.0, 0.8)  # output pixels
# Minimum RGB distance between the object's colour and the background's mean, so
# the object is visible; below it the label would be noise for any model.
_MIN_CONTRAST = 70.0
_TEXTURES = ("flat", "gradient", "stripes", "checker", "blobs")
_TEXTURE_P = (0.2, 0.2, 0.25, 0.15, 0.2)

_PNG_NAME = re.compile(r"^(?P<cls>[a-z]+)_\d{4,}\.png$")

Parts = list[tuple[np.ndarray, int]]  # polygons (n_vertices, 2) with fill 255 (add) or 0 (cut)


def _require_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value!r}")


# --------------------------------------------------------------------------- shapes


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, s], [-s, c]])


def _regular(n: int, radius: float = 1.0, jitter_deg: float = 0.0, rng=None) -> np.ndarray:
    t = np.pi / 2 + 2 * np.pi * np.arange(n) / n
    if jitter_deg:
        t = t + np.deg2rad(rng.uniform(-jitter_deg, jitter_deg, n))
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _shape_parts(rng: np.random.Generator, label: int) -> Parts:
    """Polygons of one shape of category ``label`` in a unit frame.

    Returns
    -------
    list of (ndarray of shape (n_vertices, 2), int)
        Polygons drawn in order with fill 255 (add) or 0 (cut). A cut lies
        inside the polygons before it, so the shape's area is the signed sum.
    """
    name = CLASS_NAMES[label]
    if name == "ring":
        return [(_regular(48), 255), (_regular(48, radius=rng.uniform(0.45, 0.65)), 0)]
    if name in ("triangle", "square", "hexagon"):
        n = {"triangle": 3, "square": 4, "hexagon": 6}[name]
        return [(_regular(n, jitter_deg=8 if n == 3 else 4, rng=rng), 255)]
    if name == "star":
        star = np.empty((10, 2))
        star[0::2] = _regular(5)
        star[1::2] = _regular(5, radius=rng.uniform(0.38, 0.5)) @ _rotation(np.pi / 5)
        return [(star, 255)]
    if name == "cross":
        w = rng.uniform(0.22, 0.34)
        arm = np.array([[w, w], [1, w], [1, -w], [w, -w]])
        return [(np.concatenate([arm @ _rotation(k * np.pi / 2) for k in range(4)]), 255)]
    if name == "crescent":
        # The unit disc minus a disc of radius rc centred at (d, 0). The circles
        # meet at (x, +-y); d - rc > -1 keeps the crescent in one piece.
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
    raise AssertionError(f"no drawing for class {name!r}")  # CLASS_NAMES out of sync


def _area(parts: Parts) -> float:
    total = 0.0
    for pts, fill in parts:
        x, y = pts[:, 0], pts[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        total += area if fill else -area
    return total


def _shape(rng: np.random.Generator, label: int, area_px: float) -> Parts:
    """One shape of ``label`` covering ``area_px`` pixels, randomly stretched and
    rotated, centred on the origin."""
    parts = _shape_parts(rng, label)
    stretch = np.diag([rng.uniform(0.85, 1.15), 1.0])
    parts = [(pts @ stretch, fill) for pts, fill in parts]
    # Scaling by area, not radius, keeps size from telling the classes apart.
    scale = np.sqrt(area_px / _area(parts))
    turn = _rotation(rng.uniform(0, 2 * np.pi))
    return [(pts @ turn * scale, fill) for pts, fill in parts]


def _move(parts: Parts, offset: np.ndarray) -> Parts:
    return [(pts + offset, fill) for pts, fill in parts]


def _mask(parts: Parts, shape: tuple[int, int], outline: int = 0) -> np.ndarray:
    """Rasterise polygons to a float32 mask of shape (*shape, 1) in [0, 1]; with
    ``outline`` > 0, only their outlines, that many pixels wide."""
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
    """A random texture of shape (*shape, 3), float32 in [0, 255].

    Its colours are drawn around ``base`` (shape (3,)); stripes and checks are
    sized relative to ``width``, the canvas side, so a small shape's stripes
    are as fine as the background's.
    """
    kind = _TEXTURES[rng.choice(len(_TEXTURES), p=_TEXTURE_P)]
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
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = xx * cos + yy * sin
    if kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == "stripes":
        wave = np.sin(np.float32(2 * np.pi / rng.uniform(0.04, 0.2)) * u)
        # Soft or hard stripes: the sharpness sets how much edge energy they add.
        t = 0.5 + 0.5 * np.tanh(np.float32(rng.uniform(0.5, 8.0)) * wave)
    else:  # checker
        cell = rng.uniform(0.06, 0.2)
        t = ((np.floor(u / cell) + np.floor((yy * cos - xx * sin) / cell)) % 2).astype(np.float32)
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


def _paint(rng: np.random.Generator, canvas: np.ndarray, parts: Parts, colour: np.ndarray) -> None:
    """Composite one shape, filled with a texture around ``colour`` and sometimes
    outlined, onto ``canvas`` (shape (width, width, 3)) in place."""
    width = canvas.shape[0]
    pts = np.concatenate([p for p, _ in parts])
    # Only the shape's bounding box is touched; most of the canvas never is.
    x0, y0 = np.clip(np.floor(pts.min(axis=0)).astype(int) - 4, 0, width)
    x1, y1 = np.clip(np.ceil(pts.max(axis=0)).astype(int) + 4, 0, width)
    box = (y1 - y0, x1 - x0)
    fill = _texture(rng, box, colour, width)
    outline = int(rng.integers(1, 4)) * _SUPERSAMPLE if rng.random() < 0.35 else 0
    edge_colour = _colour(rng)
    if box[0] == 0 or box[1] == 0:  # wholly out of frame
        return
    local = _move(parts, -np.array([x0, y0]))
    mask = _mask(local, box)
    region = canvas[y0:y1, x0:x1] * (1 - mask) + fill * mask
    if outline:
        edge = _mask(local, box, outline=outline)
        region = region * (1 - edge) + edge_colour * edge
    canvas[y0:y1, x0:x1] = region


# --------------------------------------------------------------------------- images


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
    is_int = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
    if not is_int or not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be an integer in [0, {len(CLASS_NAMES) - 1}]. Received: label={label!r}")
    _require_int("image_size", image_size, 16)
    width = image_size * _SUPERSAMPLE
    canvas = _background(rng, width)
    bg_mean = canvas.reshape(-1, 3).mean(axis=0)

    area = rng.uniform(*_OBJECT_AREA) * width * width
    obj = _shape(rng, label, area)
    # The whole object stays in frame: a cropped triangle reads as a quadrilateral.
    pts = np.concatenate([p for p, _ in obj])
    low, high = -pts.min(axis=0), width - pts.max(axis=0)
    obj = _move(obj, rng.uniform(np.minimum(low, high), np.maximum(low, high)))

    others = [k for k in range(len(CLASS_NAMES)) if k != label]
    n_clutter = int(rng.integers(_CLUTTER_COUNT[0], _CLUTTER_COUNT[1] + 1))
    in_front = rng.random(n_clutter) < _CLUTTER_IN_FRONT
    clutter = []
    for _ in range(n_clutter):
        shape = _shape(rng, int(rng.choice(others)), rng.uniform(*_CLUTTER_AREA) * area)
        clutter.append(_move(shape, rng.uniform(0, width, 2)))
    for parts in [c for c, front in zip(clutter, in_front) if not front]:
        _paint(rng, canvas, parts, _colour(rng))
    _paint(rng, canvas, obj, _contrasting_colour(rng, bg_mean))
    for parts in [c for c, front in zip(clutter, in_front) if front]:
        _paint(rng, canvas, parts, _colour(rng))

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


# --------------------------------------------------------------------------- dataset


def _image_rng(seed: int, label: int, index: int) -> np.random.Generator:
    # spawn_key gives each (class, index) its own stream of the seed's entropy,
    # so an image depends neither on per_class nor on classes.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(label, index)))


# The one file :func:`remove_dataset` leaves in the folder (it is ours to delete, like the images).
UNUSED_NOTE = "UNUSED.txt"


def remove_dataset(root: Path) -> None:
    """Leave ``root`` a folder with a one-line note: delete a dataset :func:`generate_dataset` wrote there, refuse anything else.

    Raises
    ------
    ValueError
        As :func:`generate_dataset`, if ``root`` holds anything it did not write.
    """
    root = Path(root)
    _clear_previous(root)
    root.mkdir(parents=True, exist_ok=True)
    # Not left empty: DVC warns that an empty output folder is empty on every run.
    (root / UNUSED_NOTE).write_text(
        "No synthetic images: params.yaml's data.source points at another dataset.\n", encoding="utf-8"
    )


def _clear_previous(root: Path) -> None:
    """Delete a dataset that an earlier call wrote to ``root``; refuse anything else.

    Only folders named in :data:`CLASS_NAMES` that hold nothing but their own
    ``<class>_<digits>.png`` files count as ours. A linked folder never does, so
    nothing outside ``root`` is reached; a linked file (a DVC checkout) is
    unlinked, which leaves its target alone.
    """
    if not root.exists():
        return
    if root.is_symlink() or not root.is_dir():
        raise ValueError(f"root must be a folder that is not a link, or not exist yet. Received: root={str(root)!r}")
    ours, foreign = [], []
    for entry in sorted(root.iterdir()):
        if entry.name == UNUSED_NOTE and entry.is_file() and not entry.is_symlink():
            ours.append(entry)
            continue
        if entry.is_symlink() or not entry.is_dir() or entry.name not in CLASS_NAMES:
            foreign.append(entry)
            continue
        for item in sorted(entry.iterdir()):
            match = _PNG_NAME.match(item.name)
            if not item.is_file() or match is None or match["cls"] != entry.name:
                foreign.append(item)
            else:
                ours.append(item)
    if foreign:
        shown = ", ".join(str(p.relative_to(root)) for p in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ValueError(
            f"root holds files that generate_dataset did not write ({shown}{more}); refusing to "
            "delete them. Pass a new or empty folder, or one a previous run wrote. "
            f"Received: root={str(root)!r}"
        )
    for item in ours:
        item.unlink()
    for entry in root.iterdir():
        entry.rmdir()
    images = [item for item in ours if item.name != UNUSED_NOTE]
    if images:
        logger.info("removed %d images of a previous synthetic dataset from %s", len(images), root)


def generate_dataset(
    root: Path,
    *,
    classes: int,
    per_class: int,
    image_size: int,
    seed: int,
    progress: bool = False,
) -> list[Path]:
    """Write the synthetic dataset as an ImageFolder tree of PNG files.

    Parameters
    ----------
    root : pathlib.Path
        Output folder, created if missing. A dataset a previous call wrote there
        is replaced; anything else there makes the call fail before it deletes
        anything.
    classes : int
        Number of classes, from 2 to ``len(CLASS_NAMES)``; the first
        ``classes`` names of :data:`CLASS_NAMES` are used.
    per_class : int
        Images per class, at least 1.
    image_size : int
        Side of the square images in pixels, at least 16.
    seed : int
        Non-negative seed. Image ``i`` of class ``c`` comes from
        ``render_image(default_rng(SeedSequence(seed, spawn_key=(c, i))), c, ...)``.
    progress : bool, default False
        Show a progress bar on stderr.

    Returns
    -------
    list of pathlib.Path
        The ``classes * per_class`` written files,
        ``root/<class>/<class>_<i:04d>.png``, sorted.

    Raises
    ------
    ValueError
        If an argument is out of range, or ``root`` holds anything but a dataset
        a previous call wrote.
    """
    _require_int("classes", classes, 2)
    if classes > len(CLASS_NAMES):
        raise ValueError(
            f"classes must be at most {len(CLASS_NAMES)}, the number of CLASS_NAMES. Received: classes={classes!r}"
        )
    _require_int("per_class", per_class, 1)
    _require_int("image_size", image_size, 16)
    _require_int("seed", seed, 0)
    root = Path(root)
    _clear_previous(root)

    paths = []
    bar = progress_bar(total=classes * per_class, desc="synthetic images", unit="img", enabled=progress)
    with bar:
        for label, name in enumerate(CLASS_NAMES[:classes]):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = render_image(_image_rng(seed, label, index), label, image_size=image_size)
                path = folder / f"{name}_{index:04d}.png"
                # No metadata and a fixed compression level: the bytes depend on
                # the pixels only, so DVC sees an unchanged image as unchanged.
                Image.fromarray(pixels).save(path, format="PNG", compress_level=6)
                paths.append(path)
                bar.update()
    logger.info(
        "wrote %d images (%d classes x %d, %dx%dx3 uint8, seed %d) to %s",
        len(paths),
        classes,
        per_class,
        image_size,
        image_size,
        seed,
        root,
    )
    return sorted(paths)
