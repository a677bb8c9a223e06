"""Training-time augmentation, named by an augment choice's `_target_`: a function of its settings
and a seed that returns Keras preprocessing layers (a user's is a function of the same form in any
module: docs/extending.md). They run on training batches inside tf.data on the CPU, overlapped with
training, and never touch validation or test images. A value of 0 leaves that transformation out.
Keras and TensorFlow are imported inside the functions, so that reading the schemas loads neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from pneumo_exp import NoSettings, config, rule

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


def strength(top: float) -> Any:
    return rule(lambda v: 0 <= v < top, f"use a number in [0, {top}) (0 leaves it out)")


@dataclass
class XRay:
    """augment=xray, xray_strong (conf/augment/xray.yaml says each key)."""
    rotation_degrees: float = strength(180)
    shift: float = strength(1)
    zoom: float = strength(1)
    contrast: float = strength(1)
    brightness: float = strength(1)
    horizontal_flip: bool
    mixup: float = rule(lambda v: 0 <= v <= 1, "use a MixUp alpha in [0, 1], e.g. 0.2 (0 = off)")
    erasing: float = rule(lambda v: 0 <= v <= 1, "use a probability in [0, 1], e.g. 0.5 (0 = off)")


def none(settings: NoSettings, seed: int) -> list[keras.layers.Layer]:
    """Training images as they are."""
    return []


def xray(settings: XRay, seed: int) -> list[keras.layers.Layer]:
    """The configured transformations, in a fixed order, each seeded from `seed`; MixUp last."""
    from keras import layers

    s = settings
    steps = [
        (s.rotation_degrees, lambda v, k: layers.RandomRotation(v / 360, fill_mode="constant", seed=k)),
        (s.shift, lambda v, k: layers.RandomTranslation(v, v, fill_mode="constant", seed=k)),
        (s.zoom, lambda v, k: layers.RandomZoom(v, fill_mode="constant", seed=k)),
        # (v, v), not v: Keras 3.15 draws a lone factor's contrast from [1, 1+v], raising it only.
        (s.contrast, lambda v, k: layers.RandomContrast((v, v), value_range=(0, 255), seed=k)),
        (s.brightness, lambda v, k: layers.RandomBrightness(v, value_range=(0, 255), seed=k)),
        (s.horizontal_flip, lambda v, k: layers.RandomFlip("horizontal", seed=k)),
        # Last, so that adding it kept the seeds of the others. (v, v), not v: a lone factor draws
        # each image's probability from [0, v]. Patch: each side 14-57% of the image's, noise-filled.
        (s.erasing, lambda v, k: layers.RandomErasing((v, v), value_range=(0, 255), seed=k)),
    ]
    transforms = [make(value, seed + i) for i, (value, make) in enumerate(steps) if value]
    # MixUp: each image and its label blended with another of the batch's, weight ~ Beta(alpha, alpha).
    return transforms + ([layers.MixUp(s.mixup, seed=seed + len(transforms))] if s.mixup else [])


def layers_for(cfg: DictConfig, seed: int) -> list[keras.layers.Layer]:
    """The layers of the function the augment choice's `_target_` names (built-in or a user's)."""
    function, _ = config.plugin("augment", cfg)
    return function(config.settings("augment", cfg), seed)


def apply(batches: tf.data.Dataset, cfg: DictConfig, seed: int) -> tf.data.Dataset:
    """`batches` of (pixels 0..255, labels) with each training batch augmented (labels too, by MixUp).

    The layers draw their randomness from seeded state variables that every call advances, so a
    pass that stopped early (a prefetch discarded with its iterator) would shift the draws of all
    later passes, and a seed would not reproduce its run. Each batch therefore first sets that
    state from its own element of a seeded random stream (new each pass, the same for the same
    pass of the same seed), and batches are augmented one at a time, prefetched to overlap training.
    """
    import tensorflow as tf
    from keras import layers

    seeded = layers_for(cfg, seed)
    if not seeded:
        return batches
    mixups = [layer for layer in seeded if isinstance(layer, layers.MixUp)]  # MixUp wants the labels
    states = tf.data.Dataset.random(seed, rerandomize_each_iteration=True).batch(2)

    def augment(state: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        for i, layer in enumerate(seeded):
            layer.generator.state.assign(state + tf.constant([i, 0], tf.int64))  # one stream per layer
        pixels, labels = batch
        for layer in seeded:
            if layer not in mixups:
                pixels = layer(pixels, training=True)
        pixels = tf.clip_by_value(pixels, 0, 255)
        for mixup in mixups:  # MixUp wants labels as a column
            mixed = mixup({"images": pixels, "labels": labels[:, None]}, training=True)
            pixels, labels = mixed["images"], mixed["labels"][:, 0]
        return pixels, labels

    return tf.data.Dataset.zip(states, batches).map(augment).prefetch(tf.data.AUTOTUNE)
