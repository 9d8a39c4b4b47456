"""The tf.data input pipeline: parallel decode, resize, batch, prefetch.

Decoding goes through :func:`pipeline.images.decode_image` (PIL, inside
``tf.numpy_function``) so that every image kind prepare accepted is read the
same way here; PIL releases the GIL while it decodes, so parallel calls (one
per usable core) overlap. Resizing is ``tf.image.resize`` (bilinear), the op an exported
model's Resizing layer uses too; a backbone with a resize of its own (a keras_hub
preset's image converter: another interpolation, a centre crop to the aspect
ratio) is resized by the ``keras.layers.Resizing`` that converter uses. Batches are uint8-valued float32 RGB
(0–255); the backbone's own preprocessing runs inside the compiled inference
step, not here. Parallelism and prefetch depth are fixed, with tf.data's
autotuner off (:func:`pipeline.tfdata.static` says why).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from pipeline.images import decode_image
from pipeline.tfdata import PREFETCH_BATCHES, static


def parallel_calls() -> int:
    """Decode calls in flight: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _decode(path: bytes) -> np.ndarray:
    return decode_image(path.decode("utf-8"))


def _decode_checked(path: bytes, sha256: bytes) -> np.ndarray:
    return decode_image(path.decode("utf-8"), sha256=sha256.decode("ascii"))


def load_and_resize(path: tf.Tensor, size: int, sha256: tf.Tensor | None = None, resize=None) -> tf.Tensor:
    """Decode one image file (its bytes checked against ``sha256`` when given) and resize it to
    ``(size, size, 3)`` float32 in 0–255.

    ``resize`` is the backbone's :class:`~pipeline.backbones.resizing.Resize`
    (``None``: the pipeline's own bilinear stretch); a layer made once per pipeline.
    """
    if sha256 is None:
        pixels = tf.numpy_function(_decode, [path], tf.uint8, stateful=False)
    else:
        pixels = tf.numpy_function(_decode_checked, [path, sha256], tf.uint8, stateful=False)
    pixels.set_shape((None, None, 3))
    if resize is not None:
        # The preset's converter does not clip (bicubic may overshoot 0–255), nor does this.
        return tf.cast(resize(tf.cast(pixels, tf.float32)), tf.float32)
    resized = tf.image.resize(pixels, (size, size), method="bilinear")
    return tf.clip_by_value(resized, 0.0, 255.0)


def _resizer(resize, size: int):
    """The Resizing layer of a backbone's own resize, or None for the pipeline's default."""
    return None if resize is None or resize.is_default else resize.layer(size)


def image_batches(paths: Sequence[str], *, size: int, batch_size: int,
                  sha256: Sequence[str] | None = None, resize=None) -> tf.data.Dataset:
    """A dataset of image batches in the order of ``paths``.

    Parameters
    ----------
    paths : sequence of str
        Image files, opened relative to the working directory.
    size : int
        Output side length.
    batch_size : int
    sha256 : sequence of str, optional
        The content hash of each file: its bytes are checked against it as they
        are decoded (:func:`pipeline.images.decode_image`).
    resize : Resize, optional
        The backbone's own resize (``None``: the pipeline's bilinear stretch).

    Returns
    -------
    tf.data.Dataset
        Yields float32 tensors of shape (batch, size, size, 3), values 0–255;
        the last batch may be smaller. Order is deterministic.
    """
    resizer = _resizer(resize, size)
    if sha256 is None:
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), dtype=tf.string))
        return _decoded_batches(dataset, lambda p: load_and_resize(p, size, resize=resizer), batch_size)
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(list(paths), dtype=tf.string),
                                                  tf.constant(list(sha256), dtype=tf.string)))
    return _decoded_batches(dataset, lambda p, h: load_and_resize(p, size, h, resize=resizer), batch_size)


def labelled_batches(paths: Sequence[str], labels: Sequence[int], *, size: int, batch_size: int,
                     shuffle_seed: int | None = None, resize=None) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` for training through the backbone (fine-tuning).

    Parameters
    ----------
    paths : sequence of str
    labels : sequence of int
    size, batch_size : int
    shuffle_seed : int, optional
        Reshuffle every epoch, seeded; ``None`` keeps the order (validation, test).
    resize : Resize, optional
        The backbone's own resize (``None``: the pipeline's bilinear stretch).

    Returns
    -------
    tf.data.Dataset
        Yields (float32 (batch, size, size, 3) in 0–255, int64 (batch,)).
    """
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(list(paths), dtype=tf.string),
                                                  tf.constant(list(labels), dtype=tf.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    resizer = _resizer(resize, size)
    return _decoded_batches(dataset, lambda p, y: (load_and_resize(p, size, resize=resizer), y), batch_size)


def _decoded_batches(dataset: tf.data.Dataset, decode, batch_size: int) -> tf.data.Dataset:
    """Decode in parallel (in order), batch, prefetch; the autotuner off."""
    dataset = dataset.map(decode, num_parallel_calls=parallel_calls(), deterministic=True)
    return static(dataset.batch(batch_size).prefetch(PREFETCH_BATCHES))
