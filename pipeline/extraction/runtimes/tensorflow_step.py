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
        Applied to each image first (see :mod:`pipeline.extraction.augmentation`);
        the step then takes one seed per image as a third argument.

    Returns
    -------
    callable
        ``infer(batch, valid[, seeds]) -> (features, lost, nonzero, overflow, largest)``
        where ``features`` has the store's dtype and the counts, over the first
        ``valid`` rows (the rest is padding), feed
        :class:`pipeline.extraction.precision.PrecisionGuard`.
    """
    import tensorflow as tf

    from pipeline.extraction.augmentation import augment

    out_dtype = tf.as_dtype(dtype)

    def step(batch, valid):
        full = tf.cast(model(preprocess(batch), training=False), tf.float32)
        stored = tf.cast(full, out_dtype)
        full, kept = full[:valid], stored[:valid]
        nonzero = tf.not_equal(full, 0)
        lost = tf.logical_and(nonzero, tf.equal(kept, 0))
        overflow = tf.logical_and(tf.math.is_finite(full), tf.logical_not(tf.math.is_finite(kept)))
        return (stored, tf.math.count_nonzero(lost), tf.math.count_nonzero(nonzero),
                tf.math.count_nonzero(overflow), tf.reduce_max(tf.abs(full)))

    # A fixed signature: traced once however many batches run.
    images = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    valid = tf.TensorSpec((), tf.int32)
    if augment_layers is None:
        return tf.function(step, input_signature=[images, valid], jit_compile=jit_compile)
    return tf.function(lambda batch, n, seeds: step(augment(augment_layers, batch, seeds), n),
                       input_signature=[images, valid, tf.TensorSpec((None,), tf.int64)])
