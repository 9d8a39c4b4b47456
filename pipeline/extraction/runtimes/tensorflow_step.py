"""The compiled TensorFlow inference step: raw 0–255 batch → stored features, plus precision counts."""

from __future__ import annotations


def compile_inference(model, preprocess, *, dtype: str, jit_compile: bool, augment_layers=None):
    """The compiled step: raw 0–255 batch → stored features, plus precision-loss counts.

    Parameters
    ----------
    model, preprocess
        The truncated backbone and its input preprocessing.
    dtype : str
        The store's dtype.
    jit_compile : bool
    augment_layers : list of keras layers, optional
        Applied to the batch first (see :mod:`pipeline.extraction.augmentation`);
        the step then takes the batch's seed as a second argument.

    Returns
    -------
    callable
        ``infer(batch[, seed]) -> (features, lost, nonzero, overflow, largest)``
        where ``features`` has the store's dtype and the counts feed
        :class:`pipeline.extraction.precision.PrecisionGuard`.
    """
    import tensorflow as tf

    from pipeline.extraction.augmentation import augment

    out_dtype = tf.as_dtype(dtype)

    def step(batch):
        full = tf.cast(model(preprocess(batch), training=False), tf.float32)
        stored = tf.cast(full, out_dtype)
        nonzero = tf.not_equal(full, 0)
        lost = tf.logical_and(nonzero, tf.equal(stored, 0))
        overflow = tf.logical_and(tf.math.is_finite(full), tf.logical_not(tf.math.is_finite(stored)))
        return (stored, tf.math.count_nonzero(lost), tf.math.count_nonzero(nonzero),
                tf.math.count_nonzero(overflow), tf.reduce_max(tf.abs(full)))

    # A fixed signature with any batch size: traced once, even for the smaller last batch of each split.
    images = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    if augment_layers is None:
        return tf.function(step, input_signature=[images], jit_compile=jit_compile)
    return tf.function(lambda batch, seed: step(augment(augment_layers, batch, seed)),
                       input_signature=[images, tf.TensorSpec((), tf.int64)])
