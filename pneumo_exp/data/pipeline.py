"""From decoded splits to what a Keras model takes: tf.data batches, or numpy arrays outside tf.data.

The one module of pneumo_exp.data that imports TensorFlow: everything before it is numpy/Pillow, so
bad data fails before TensorFlow loads.
"""

import numpy as np
import tensorflow as tf

from pneumo_exp.data.dataset import Split


def model_input(images: np.ndarray, channels: int) -> np.ndarray:
    """Stored uint8 grayscale images as a model takes them outside tf.data: float32, `channels` deep."""
    pixels = images.astype("float32")
    return np.repeat(pixels, 3, axis=-1) if channels == 3 else pixels


def batches(split: Split, batch_size: int, channels: int, *, shuffle: bool = False,
            balanced: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255, float32 label); the model rescales.

    shuffle: a new order every epoch. balanced: an endless stream drawing NORMAL and PNEUMONIA
    images with equal probability (oversampling); fit it with steps_per_epoch.
    """
    images = tf.constant(split.images)
    labels = tf.constant(split.labels, tf.float32)
    if balanced:
        by_class = [
            tf.data.Dataset.from_tensor_slices(np.flatnonzero(split.labels == label))
            .repeat().shuffle(int(np.sum(split.labels == label)), seed=seed + label)
            for label in (0, 1)
        ]
        indices = tf.data.Dataset.sample_from_datasets(by_class, weights=[0.5, 0.5], seed=seed)
    else:
        indices = tf.data.Dataset.range(len(split.labels))
        if shuffle:
            indices = indices.shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)

    def gather(batch):
        pixels = tf.cast(tf.gather(images, batch), tf.float32)
        if channels == 3:
            pixels = tf.image.grayscale_to_rgb(pixels)
        return pixels, tf.gather(labels, batch)

    return without_autotuning(indices.batch(batch_size).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off. Its background thread made the end of an epoch (Keras
    deleting the epoch's iterator) wait 20-40 s for it, in about one epoch of three on a 2-core
    machine, and the process exit too. Without it, a map runs one call per core and prefetch tunes
    its own buffer: the same throughput, no stalls (benchmarks/README.md)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
