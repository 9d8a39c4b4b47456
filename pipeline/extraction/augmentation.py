"""Seeded image augmentation for cached views: numpy, one image at a time, reproducible per image.

A view of an image must be the same whether it is computed at once, after a
crash, when more views are added later, when the dataset around the image
changes, or on another runtime; so each image is augmented on its own, in the
input pipeline (before any framework), by a random generator seeded from
(seed, view, the image's content hash) (:func:`view_seed`). The ops, applied in
this order to the resized 0–255 image:

- ``flip``: ``horizontal``, ``vertical`` or ``horizontal_and_vertical`` — each
  axis flipped with probability ½;
- ``rotation: f``, ``zoom: f``, ``translation: f`` — one affine map about the
  centre: an angle uniform in ±f of a full turn, a scale uniform in 1 ± f, a
  shift uniform in ±f of the side on each axis; bilinear, edges reflected;
- ``contrast: f`` — each channel's deviation from its mean scaled by a factor
  uniform in 1 ± f.

Values are clipped to 0–255. Fine-tuning, which trains through the backbone,
augments with the Keras preprocessing layers of :func:`build_layers` instead
(random at each step: nothing there needs to be reproducible per image).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import numpy as np

from pipeline.config import add_check

OpValue = float | str

OPS = ("flip", "rotation", "zoom", "translation", "contrast")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def validate_ops(ops: Mapping[str, OpValue], *, where: str = "extract.augment.ops") -> None:
    """Check op names and factors, naming the bad one and the valid choices.

    Raises
    ------
    ValueError
    """
    for name, value in ops.items():
        if name not in OPS:
            raise ValueError(f"{where}: unknown op {name!r}. Valid ops: {', '.join(OPS)}")
        if name == "flip":
            if value not in FLIP_MODES:
                raise ValueError(f"{where}.flip must be one of {list(FLIP_MODES)}. Received: {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(
                f"{where}.{name} is a factor in (0, 1) (a fraction of a turn, of the size, or of "
                f"the contrast). Received: {value!r}"
            )


add_check("extract.augment", lambda augment: validate_ops(augment.ops))


def view_seed(seed: int, view: int, sha256: str) -> int:
    """A 63-bit seed for one view of one image: stable across runs, resumes, view counts and datasets."""
    digest = hashlib.sha256(f"{seed}/{view}/{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


def augment_image(image: np.ndarray, ops: Mapping[str, OpValue], seed: int) -> np.ndarray:
    """One augmented view of a resized image.

    Parameters
    ----------
    image : ndarray of shape (size, size, 3), float32 in 0–255
    ops : mapping
        As ``extract.augment.ops`` (see the module docstring).
    seed : int
        From :func:`view_seed`.

    Returns
    -------
    ndarray of the same shape, float32 in 0–255
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.asarray(image, np.float32)
    flip = ops.get("flip")
    if flip in ("horizontal", "horizontal_and_vertical") and rng.random() < 0.5:
        out = out[:, ::-1]
    if flip in ("vertical", "horizontal_and_vertical") and rng.random() < 0.5:
        out = out[::-1]
    angle = rng.uniform(-1, 1) * ops["rotation"] * 2 * math.pi if "rotation" in ops else 0.0
    scale = 1.0 + rng.uniform(-1, 1) * ops["zoom"] if "zoom" in ops else 1.0
    side = out.shape[0]
    shift = rng.uniform(-1, 1, size=2) * ops["translation"] * side if "translation" in ops else np.zeros(2)
    if angle or scale != 1.0 or shift.any():
        cos, sin = math.cos(angle), math.sin(angle)
        # Output pixel o samples input pixel M·(o - centre) + centre - shift.
        matrix = np.array([[cos, -sin], [sin, cos]]) * scale
        centre = np.array([(side - 1) / 2, (side - 1) / 2])
        offset = centre - matrix @ centre - shift
        out = np.stack(
            [
                ndimage.affine_transform(out[..., c], matrix, offset=offset, order=1, mode="reflect")
                for c in range(out.shape[2])
            ],
            axis=-1,
        )
    if "contrast" in ops:
        factor = 1.0 + rng.uniform(-1, 1) * ops["contrast"]
        mean = out.mean(axis=(0, 1), keepdims=True)
        out = (out - mean) * factor + mean
    return np.clip(out, 0.0, 255.0).astype(np.float32, copy=False)


def build_layers(ops: Mapping[str, OpValue]) -> list:
    """Keras preprocessing layers for ``ops`` (fine-tuning's training-time augmentation), in the module's op order."""
    import keras

    validate_ops(ops)
    factories = {
        "flip": lambda v: keras.layers.RandomFlip(v),
        "rotation": lambda v: keras.layers.RandomRotation(v, fill_mode="reflect"),
        "zoom": lambda v: keras.layers.RandomZoom(v, fill_mode="reflect"),
        "translation": lambda v: keras.layers.RandomTranslation(v, v, fill_mode="reflect"),
        "contrast": lambda v: keras.layers.RandomContrast(v, value_range=(0, 255)),
    }
    return [factories[name](ops[name]) for name in OPS if name in ops]
