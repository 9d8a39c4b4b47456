"""The input pipeline every runtime reads: decode, resize (augment) in threads, in order, batch by batch.

:func:`image_batches` decodes each file with :func:`pipeline.images.decode_image`
(its bytes checked against its content hash; JPEGs at least twice the input size
decoded in the DCT domain) and resizes it with :func:`resize_bilinear` — the
same arithmetic as ``tf.image.resize`` (bilinear, half-pixel centres, no
antialiasing), which is what an exported model's ``Resizing`` layer does, so the
exported model sees the pixels the cached features were made from. Augmented
views are made here too (:mod:`pipeline.extraction.augmentation`), so whichever
runtime follows gets the same pixels. Work runs in one thread per usable core
(PIL and numpy release the GIL); at most ``ahead`` batches are decoded before
the one being consumed, so memory stays flat; batches come out in the order of
the paths. No framework is imported here.

:func:`labelled_batches` is the tf.data pipeline of fine-tuning (training
through the backbone), over the same decoding and resizing.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from pipeline.images import decode_image

# Batches decoded ahead of the one being consumed.
AHEAD_BATCHES = 2


def parallel_calls() -> int:
    """Decode calls in flight: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and interpolation weights along one axis, as TensorFlow's bilinear resize computes them."""
    scale = np.float32(in_size / out_size)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centres)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centres), in_size - 1).astype(np.int64)
    return lower, upper, (centres - floor).astype(np.float32)


def resize_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(h, w, 3)`` pixels to ``(size, size, 3)`` float32 in 0–255 as ``tf.image.resize(..., "bilinear")`` does.

    Half-pixel centres, no antialiasing, float32 arithmetic in TensorFlow's order
    (rows of the two neighbours interpolated along x, then along y), so the two
    agree to float32 rounding.
    """
    image = np.asarray(pixels)
    top_row, bottom_row, y_lerp = _axis_weights(image.shape[0], size)
    left, right, x_lerp = _axis_weights(image.shape[1], size)
    x_lerp = x_lerp[None, :, None]
    # Gather the four neighbours (in the source dtype, then float32), then TensorFlow's two lerps.
    top, bottom = image[top_row], image[bottom_row]
    top_left, top_right = top[:, left].astype(np.float32), top[:, right].astype(np.float32)
    bottom_left, bottom_right = bottom[:, left].astype(np.float32), bottom[:, right].astype(np.float32)
    top_left += (top_right - top_left) * x_lerp
    bottom_left += (bottom_right - bottom_left) * x_lerp
    top_left += (bottom_left - top_left) * y_lerp[:, None, None]
    return np.clip(top_left, 0.0, 255.0, out=top_left)


def load_and_resize(path: str, size: int, sha256: Optional[str] = None) -> np.ndarray:
    """One image file, decoded for ``size`` (bytes checked when ``sha256`` is given), as ``(size, size, 3)`` float32."""
    return resize_bilinear(decode_image(path, sha256=sha256, target=size), size)


def image_batches(paths: Sequence[str], *, size: int, batch_size: int, sha256: Optional[Sequence[str]] = None,
                  transform: Optional[Callable[[int, np.ndarray], np.ndarray]] = None,
                  ahead: int = AHEAD_BATCHES) -> Iterator[np.ndarray]:
    """Batches of decoded, resized images in the order of ``paths``.

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
    transform : callable, optional
        ``transform(index, image) -> image`` applied to each resized image in its
        worker thread (augmentation; ``index`` is its position in ``paths``).
    ahead : int
        Batches decoded before the one being consumed (bounds memory).

    Yields
    ------
    ndarray of shape (batch, size, size, 3), float32 in 0–255
        The last batch may be smaller.
    """
    def one(index: int) -> np.ndarray:
        image = load_and_resize(paths[index], size, None if sha256 is None else sha256[index])
        return image if transform is None else transform(index, image)

    window = max(1, ahead) * batch_size + batch_size
    with ThreadPoolExecutor(max_workers=parallel_calls(), thread_name_prefix="decode") as pool:
        pending: deque[Future] = deque()
        submitted = 0
        batch: list[np.ndarray] = []
        try:
            while submitted < len(paths) or pending:
                while submitted < len(paths) and len(pending) < window:
                    pending.append(pool.submit(one, submitted))
                    submitted += 1
                batch.append(pending.popleft().result())
                if len(batch) == batch_size:
                    yield np.stack(batch)
                    batch = []
            if batch:
                yield np.stack(batch)
        finally:
            for future in pending:  # a consumer that stops early (an error): drop the rest
                future.cancel()


def labelled_batches(paths: Sequence[str], labels: Sequence[int], *, size: int, batch_size: int,
                     shuffle_seed: int | None = None):
    """Batches of ``(images, labels)`` for training through the backbone (fine-tuning), as a tf.data pipeline.

    Parameters
    ----------
    paths : sequence of str
    labels : sequence of int
    size, batch_size : int
    shuffle_seed : int, optional
        Reshuffle every epoch, seeded; ``None`` keeps the order (validation, test).

    Returns
    -------
    tf.data.Dataset
        Yields (float32 (batch, size, size, 3) in 0–255, int64 (batch,)), decoded
        and resized as :func:`image_batches` does.
    """
    import tensorflow as tf

    from pipeline.tfdata import PREFETCH_BATCHES, static

    def decode(path, label):
        image = tf.numpy_function(lambda p: load_and_resize(p.decode("utf-8"), size), [path], tf.float32,
                                  stateful=False)
        image.set_shape((size, size, 3))
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(list(paths), dtype=tf.string),
                                                  tf.constant(list(labels), dtype=tf.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.map(decode, num_parallel_calls=parallel_calls(), deterministic=True)
    return static(dataset.batch(batch_size).prefetch(PREFETCH_BATCHES))
