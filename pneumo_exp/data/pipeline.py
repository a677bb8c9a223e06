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
            sampling: str = "none", seed: int = 0) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255, float32 label); the model rescales.

    shuffle: a new order every epoch. sampling "over": an endless stream drawing NORMAL and
    PNEUMONIA images with equal probability (oversampling); "under": endless epochs of
    undersampled_epoch's images, each epoch batched on its own. Fit either with steps_per_epoch
    (imbalance.steps_per_epoch).
    """
    images = tf.constant(split.images)
    labels = tf.constant(split.labels, tf.float32)
    if sampling == "under":
        batched = tf.data.Dataset.counter().flat_map(
            lambda epoch: tf.data.Dataset.from_tensor_slices(
                undersampled_epoch(split.labels, seed, epoch)).batch(batch_size))
    elif sampling == "over":
        by_class = [
            tf.data.Dataset.from_tensor_slices(np.flatnonzero(split.labels == label))
            .repeat().shuffle(int(np.sum(split.labels == label)), seed=seed + label)
            for label in (0, 1)
        ]
        batched = tf.data.Dataset.sample_from_datasets(by_class, weights=[0.5, 0.5],
                                                       seed=seed).batch(batch_size)
    else:
        indices = tf.data.Dataset.range(len(split.labels))
        if shuffle:
            indices = indices.shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)
        batched = indices.batch(batch_size)

    def gather(batch):
        pixels = tf.cast(tf.gather(images, batch), tf.float32)
        if channels == 3:
            pixels = tf.image.grayscale_to_rgb(pixels)
        return pixels, tf.gather(labels, batch)

    return without_autotuning(batched.map(
        gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def undersampled_epoch(labels: np.ndarray, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """Epoch `epoch`'s image indices under undersampling: every minority-class image and as many
    majority images, drawn afresh each epoch without repeats, shuffled together. Stateless draws
    keyed by (seed, epoch): a seed repeats its epochs whatever TensorFlow's global seed, and two
    seeds never share an epoch's subset (seed + epoch would: seed 0's epoch 1 is seed 1's epoch 0)."""
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:  # an empty epoch would make the endless stream spin forever
        raise ValueError(f"undersampling needs both classes in the training split, got counts {counts}")
    minority = int(np.argmin(counts))
    keep = tf.constant(np.flatnonzero(labels == minority), tf.int64)
    pool = tf.constant(np.flatnonzero(labels != minority), tf.int64)
    draw, order = (tf.stack([tf.constant(seed, tf.int64), 2 * epoch + k]) for k in (0, 1))
    drawn = tf.random.experimental.stateless_shuffle(pool, seed=draw)[:counts.min()]
    return tf.random.experimental.stateless_shuffle(tf.concat([keep, drawn], 0), seed=order)


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off. Its background thread made the end of an epoch (Keras
    deleting the epoch's iterator) wait 20-40 s for it, in about one epoch of three on a 2-core
    machine, and the process exit too. Without it, a map runs one call per core and prefetch tunes
    its own buffer: the same throughput, no stalls (benchmarks/README.md)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
