"""Training-time augmentation (the `augment` group): Keras preprocessing layers on training batches.

They run inside tf.data on the CPU, overlapped with training, and never touch validation or test
images. A value of 0 leaves that transformation out.
"""

import keras
import tensorflow as tf
from keras import layers
from omegaconf import DictConfig


def layers_for(cfg: DictConfig, seed: int) -> list[keras.layers.Layer]:
    """The configured transformations, in a fixed order, each seeded from `seed`."""
    if cfg.name == "none":
        return []
    steps = [
        (cfg.rotation_degrees, lambda v, s: layers.RandomRotation(v / 360, fill_mode="constant", seed=s)),
        (cfg.shift, lambda v, s: layers.RandomTranslation(v, v, fill_mode="constant", seed=s)),
        (cfg.zoom, lambda v, s: layers.RandomZoom(v, fill_mode="constant", seed=s)),
        (cfg.contrast, lambda v, s: layers.RandomContrast(v, value_range=(0, 255), seed=s)),
        (cfg.brightness, lambda v, s: layers.RandomBrightness(v, value_range=(0, 255), seed=s)),
        (cfg.horizontal_flip, lambda v, s: layers.RandomFlip("horizontal", seed=s)),
    ]
    return [make(value, seed + i) for i, (value, make) in enumerate(steps) if value]


def apply(batches: tf.data.Dataset, cfg: DictConfig, seed: int) -> tf.data.Dataset:
    """`batches` of (pixels 0..255, labels) with each training batch augmented."""
    transforms = layers_for(cfg, seed)
    if not transforms:
        return batches
    pipeline = keras.Sequential(transforms)

    def augment(pixels: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.clip_by_value(pipeline(pixels, training=True), 0, 255), labels

    # One batch at a time: the layers draw their randomness from a seeded state that each call
    # advances, so parallel calls would take the draws in a racing order and a seed would not
    # reproduce its run. Prefetching still overlaps augmentation with training.
    return batches.map(augment).prefetch(tf.data.AUTOTUNE)
