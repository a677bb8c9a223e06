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
        # (v, v), not v: Keras 3.15 draws a lone factor's contrast from [1, 1+v], raising it only.
        (cfg.contrast, lambda v, s: layers.RandomContrast((v, v), value_range=(0, 255), seed=s)),
        (cfg.brightness, lambda v, s: layers.RandomBrightness(v, value_range=(0, 255), seed=s)),
        (cfg.horizontal_flip, lambda v, s: layers.RandomFlip("horizontal", seed=s)),
        # Last, so that adding it kept the seeds of the others. (v, v), not v: a lone factor draws
        # each image's probability from [0, v]. Patch: each side 14-57% of the image's, noise-filled.
        (cfg.erasing, lambda v, s: layers.RandomErasing((v, v), value_range=(0, 255), seed=s)),
    ]
    return [make(value, seed + i) for i, (value, make) in enumerate(steps) if value]


def apply(batches: tf.data.Dataset, cfg: DictConfig, seed: int) -> tf.data.Dataset:
    """`batches` of (pixels 0..255, labels) with each training batch augmented (labels too, by MixUp).

    The layers draw their randomness from seeded state variables that every call advances, so a
    pass that stopped early (a prefetch discarded with its iterator) would shift the draws of all
    later passes, and a seed would not reproduce its run. Each batch therefore first sets that
    state from its own element of a seeded random stream (new each pass, the same for the same
    pass of the same seed), and batches are augmented one at a time, prefetched to overlap training.
    """
    transforms = layers_for(cfg, seed)
    # MixUp, after the others: each image and its label blended with another of the batch's,
    # weight ~ Beta(alpha, alpha), alpha = cfg.mixup (0 or absent = off).
    mixup = layers.MixUp(cfg.mixup, seed=seed + len(transforms)) if cfg.get("mixup") else None
    seeded = transforms + ([mixup] if mixup else [])
    if not seeded:
        return batches
    states = tf.data.Dataset.random(seed, rerandomize_each_iteration=True).batch(2)

    def augment(state: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        for i, layer in enumerate(seeded):
            layer.generator.state.assign(state + tf.constant([i, 0], tf.int64))  # one stream per layer
        pixels, labels = batch
        for layer in transforms:
            pixels = layer(pixels, training=True)
        pixels = tf.clip_by_value(pixels, 0, 255)
        if mixup:  # MixUp wants labels as a column
            mixed = mixup({"images": pixels, "labels": labels[:, None]}, training=True)
            pixels, labels = mixed["images"], mixed["labels"][:, 0]
        return pixels, labels

    return tf.data.Dataset.zip(states, batches).map(augment).prefetch(tf.data.AUTOTUNE)
