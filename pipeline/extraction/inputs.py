"""The input pipeline every runtime reads: decode, resize (augment) in threads, in order, batch by batch.

:func:`image_batches` decodes each file with :func:`pipeline.images.decode_image`
(its bytes checked against its content hash; JPEGs at least twice the input size
decoded in the DCT domain) and resizes it with :func:`resize_image`: by
default :func:`resize_bilinear` — the same arithmetic as ``tf.image.resize``
(bilinear, half-pixel centres, no antialiasing), which is what an exported
model's ``Resizing`` layer does, so the exported model sees the pixels the
cached features were made from; a backbone with a resize of its own (a
keras_hub preset's image converter: a centre crop to the aspect ratio, another
interpolation) gets that resize, in numpy too. Augmented views are made here
as well (:mod:`pipeline.extraction.augmentation`), so whichever runtime follows
gets the same pixels. Work runs in one thread per usable core (PIL and numpy
release the GIL); at most ``ahead`` batches are decoded before the one being
consumed, so memory stays flat; batches come out in the order of the paths.
No framework is imported here.

:func:`labelled_batches` is the tf.data pipeline of fine-tuning (training
through the backbone), over the same decoding and resizing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pipeline.backbones.registry import Resize
from pipeline.cache_dir import usable_cores
from pipeline.images import decode_image

# Batches decoded ahead of the one being consumed.
AHEAD_BATCHES = 2
_local = threading.local()  # per-thread working arrays of resize_bilinear


def parallel_calls() -> int:
    """Decode calls in flight: one per core this process may use."""
    return usable_cores()


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and interpolation weights along one axis, as TensorFlow's bilinear resize computes them."""
    scale = np.float32(in_size / out_size)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centres)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centres), in_size - 1).astype(np.int64)
    return lower, upper, (centres - floor).astype(np.float32)


def _scratch(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's working arrays for a resize to ``shape`` (uint8 gather, float32 near and far), made once."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    if shape not in buffers:
        buffers[shape] = (np.empty(shape, np.uint8), np.empty(shape, np.float32), np.empty(shape, np.float32))
    return buffers[shape]


def resize_bilinear(pixels: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resize ``(h, w, c)`` uint8 pixels to ``(size, size, c)`` float32 in 0–255 as ``tf.image.resize(..., "bilinear")`` does.

    Half-pixel centres, no antialiasing, float32 arithmetic in TensorFlow's order
    (rows of the two neighbours interpolated along x, then along y), so the two
    agree to the bit. Rows are handled flattened (``w·c`` values) and the lerps
    run in place in per-thread working arrays: numpy then loops over long rows
    and allocates (and page-faults) nothing but the result — about 8× faster
    than broadcasting over a trailing axis of 3 with temporaries. ``out``: a
    float32 ``(size, size, c)`` array to write into (a slot of a batch).
    """
    image = np.asarray(pixels)
    if image.dtype != np.uint8:
        raise TypeError(f"resize_bilinear takes uint8 pixels (decode_image's); received {image.dtype}")
    height, width, channels = image.shape
    top_row, bottom_row, y_lerp = _axis_weights(height, size)
    left, right, x_lerp = _axis_weights(width, size)
    offsets = np.arange(channels)
    rows = image.reshape(height, width * channels)[np.concatenate([top_row, bottom_row])]
    gathered, near, far = _scratch((2 * size, size * channels))  # top rows, then bottom rows
    np.take(rows, (left[:, None] * channels + offsets).ravel(), axis=1, out=gathered)
    np.copyto(near, gathered)
    np.take(rows, (right[:, None] * channels + offsets).ravel(), axis=1, out=gathered)
    np.copyto(far, gathered)
    far -= near
    far *= np.repeat(x_lerp, channels)
    near += far  # along x: left + (right - left) · x_lerp
    top, bottom = near[:size], near[size:]
    bottom -= top
    bottom *= y_lerp[:, None]
    top += bottom  # along y
    if out is None:
        out = np.empty((size, size, channels), np.float32)
    np.clip(top, 0.0, 255.0, out=out.reshape(size, size * channels))
    return out


def centre_crop_square(pixels: np.ndarray) -> np.ndarray:
    """The centred square of an image, as ``keras.layers.Resizing(crop_to_aspect_ratio=True)`` crops for a square output."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = int((height - side) / 2), int((width - side) / 2)
    return pixels[top : top + side, left : left + side]


def resize_image(
    pixels: np.ndarray, size: int, resize: Resize | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Resize to ``(size, size, 3)`` float32 as the backbone's :class:`~pipeline.backbones.registry.Resize` says.

    The default (and bilinear with a centre crop, a keras_hub converter's usual
    setting) is :func:`resize_bilinear`, exact to TensorFlow's op; other
    interpolations, antialiasing or padding use Keras' numpy implementation of
    ``keras.ops.image.resize`` (the preset's converter does not clip, nor does
    this). ``out``: an array to write into.
    """
    if resize is None or resize.is_default:
        return resize_bilinear(pixels, size, out)
    if resize.interpolation == "bilinear" and not resize.antialias and not resize.pad_to_aspect_ratio:
        return resize_bilinear(centre_crop_square(pixels) if resize.crop_to_aspect_ratio else pixels, size, out)
    batch = np.asarray(pixels, np.float32)[None]
    resized = np.asarray(
        _numpy_resize()(
            batch,
            (size, size),
            interpolation=resize.interpolation,
            antialias=resize.antialias,
            crop_to_aspect_ratio=resize.crop_to_aspect_ratio,
            pad_to_aspect_ratio=resize.pad_to_aspect_ratio,
        ),
        np.float32,
    )[0]
    if out is None:
        return resized
    out[...] = resized
    return out


def _numpy_resize():
    """``keras.ops.image.resize`` of Keras' numpy backend, whatever backend this process runs.

    Importing ``keras.src.backend.numpy.image`` binds the attribute
    ``keras.src.backend.numpy`` to the numpy backend package, which shadows the
    active backend's ``numpy`` ops module Keras reads through that same name
    (``keras.src.backend.numpy.zeros`` then fails everywhere, keras_hub
    included): the attribute is put back.
    """
    import keras.src.backend as backends

    active = backends.__dict__.get("numpy")
    from keras.src.backend.numpy.image import resize

    if active is not None:
        backends.numpy = active
    return resize


def load_and_resize(
    path: str,
    size: int,
    sha256: str | None = None,
    resize: Resize | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One image file, decoded for ``size`` (bytes checked when ``sha256`` is given), as ``(size, size, 3)`` float32."""
    return resize_image(decode_image(path, sha256=sha256, target=size), size, resize, out)


def image_batches(
    paths: Sequence[str],
    *,
    size: int,
    batch_size: int,
    sha256: Sequence[str] | None = None,
    transform: Callable[[int, np.ndarray], np.ndarray] | None = None,
    resize: Resize | None = None,
    ahead: int = AHEAD_BATCHES,
    reuse: bool = False,
) -> Iterator[np.ndarray]:
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
    resize : Resize, optional
        The backbone's own resize (``None``: the pipeline's bilinear stretch).
    ahead : int
        Batches decoded before the one being consumed (bounds memory).
    reuse : bool
        Recycle ``ahead + 2`` batch arrays: a yielded batch is valid only until
        the next one is asked for (a consumer that is done with each batch
        then, as extraction is, saves allocating and page-faulting every batch).

    Yields
    ------
    ndarray of shape (batch, size, size, 3), float32 in 0–255
        The last batch may be smaller. Workers write each image into its slot of
        the batch array, so nothing is copied to assemble a batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: {batch_size}")
    ring = max(1, ahead) + 2
    arrays: dict[int, np.ndarray] = {}  # batch number → its array, while in flight

    def array_of(number: int) -> np.ndarray:
        if number not in arrays:
            # A recycled array is free: its batch was consumed (the window keeps writers ``ring - 1`` batches ahead).
            recycled = arrays.pop(number - ring, None) if reuse else None
            arrays[number] = recycled if recycled is not None else np.empty((batch_size, size, size, 3), np.float32)
        return arrays[number]

    def one(index: int, slot: np.ndarray) -> None:
        load_and_resize(paths[index], size, None if sha256 is None else sha256[index], resize, out=slot)
        if transform is not None:
            slot[...] = transform(index, slot)

    window = max(1, ahead) * batch_size + batch_size
    with ThreadPoolExecutor(max_workers=parallel_calls(), thread_name_prefix="decode") as pool:
        pending: deque[Future] = deque()
        submitted = done = 0
        try:
            while done < len(paths):
                while submitted < len(paths) and len(pending) < window:
                    pending.append(
                        pool.submit(one, submitted, array_of(submitted // batch_size)[submitted % batch_size])
                    )
                    submitted += 1
                pending.popleft().result()
                done += 1
                if done % batch_size == 0 or done == len(paths):
                    number = (done - 1) // batch_size
                    batch = arrays[number] if reuse else arrays.pop(number)
                    yield batch[: done - number * batch_size]
        finally:
            for future in pending:  # a consumer that stops early (an error): drop the rest
                future.cancel()
            for future in pending:
                if not future.cancelled():
                    future.exception()  # let running workers finish before their arrays go


def labelled_batches(
    paths: Sequence[str],
    labels: Sequence[int],
    *,
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    resize: Resize | None = None,
):
    """Batches of ``(images, labels)`` for training through the backbone (fine-tuning), as a tf.data pipeline.

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
        Yields (float32 (batch, size, size, 3) in 0–255, int64 (batch,)), decoded
        and resized as :func:`image_batches` does.
    """
    import tensorflow as tf

    from pipeline.tfdata import PREFETCH_BATCHES, static

    def decode(path, label):
        image = tf.numpy_function(
            lambda p: load_and_resize(p.decode("utf-8"), size, resize=resize), [path], tf.float32, stateful=False
        )
        image.set_shape((size, size, 3))
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths), dtype=tf.string), tf.constant(list(labels), dtype=tf.int64))
    )
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.map(decode, num_parallel_calls=parallel_calls(), deterministic=True)
    return static(dataset.batch(batch_size).prefetch(PREFETCH_BATCHES))
