"""tf.data settings shared by every pipeline that feeds TensorFlow (images, cached features).

tf.data's autotuner is off everywhere (:func:`static`): in TensorFlow 2.21
dropping an autotuned iterator waits for the autotuner's sleeping thread, which
stalled extraction for ~5.5 s per split with both cores idle (py-spy:
``RootDataset::Iterator::~Iterator`` → ``UnboundedThreadPool::LogicalThreadWrapper``);
fixed parallelism and prefetch depth ran as fast (BENCHMARKS.md, "CPU
extraction"), and a dense-head fit on 800 rows took 1.9 s instead of 2.7 s.
"""

from __future__ import annotations

# Batches prepared ahead of the one being consumed.
PREFETCH_BATCHES = 2


def static(dataset):
    """``dataset`` (a ``tf.data.Dataset``) with tf.data's autotuner off."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
