"""The answers to class imbalance (~3 pneumonia per normal), one function each, named by an
imbalance choice's `_target_`: each decides the loss, the class weights and whether training
batches are over- or undersampled, from the training split's labels only. A user's method is a
function of the same form in any module (docs/extending.md). Keras is imported inside the functions,
so that reading their schemas (config.check) loads no TensorFlow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from omegaconf import DictConfig

from pneumo_exp import NoSettings, config, rule

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Plan:
    loss: keras.losses.Loss
    class_weight: dict[int, float] | None = None
    sampling: Literal["none", "over", "under"] = "none"  # pipeline.batches(sampling=)


def none(settings: NoSettings, labels: np.ndarray) -> Plan:
    """Plain binary cross-entropy."""
    import keras

    return Plan(keras.losses.BinaryCrossentropy())


def class_weight(settings: NoSettings, labels: np.ndarray) -> Plan:
    """The notebook's weights n_total / (2 * n_class), i.e. scikit-learn's "balanced"."""
    import keras
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    return Plan(keras.losses.BinaryCrossentropy(), {0: float(weights[0]), 1: float(weights[1])})


@dataclass
class Focal:
    """imbalance=focal (conf/imbalance/focal.yaml)."""
    alpha: float = rule(lambda v: 0 <= v <= 1, "use a number between 0 and 1")
    gamma: float = rule(lambda v: v >= 0, "use a number >= 0")


def focal(settings: Focal, labels: np.ndarray) -> Plan:
    """Binary focal loss; alpha weighs pneumonia, 1 - alpha normal."""
    import keras

    return Plan(keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=settings.alpha,
                                                     gamma=settings.gamma))


def oversample(settings: NoSettings, labels: np.ndarray) -> Plan:
    """Binary cross-entropy on batches that draw both classes equally often."""
    import keras

    return Plan(keras.losses.BinaryCrossentropy(), sampling="over")


def undersample(settings: NoSettings, labels: np.ndarray) -> Plan:
    """Binary cross-entropy on epochs of every minority image and a fresh, equal-size random subset
    of the majority class: balanced without repeating an image within an epoch."""
    import keras

    return Plan(keras.losses.BinaryCrossentropy(), sampling="under")


@dataclass
class EffectiveNumber:
    """imbalance=effective_number (conf/imbalance/effective_number.yaml)."""
    beta: float = rule(lambda v: 0 <= v < 1, "use a number in [0, 1), e.g. 0.999 (0 = no reweighting; "
                       "towards 1 = class_weight's weights)")


def effective_number(settings: EffectiveNumber, labels: np.ndarray) -> Plan:
    """Class weights by the effective number of samples (Cui et al. 2019): each class weighs
    (1 - beta) / (1 - beta^n_class), scaled to sum to 2, because a class's extra images add less
    and less that is new; beta 0 weighs both classes alike (none), beta towards 1 as class_weight."""
    import keras

    counts = np.bincount(labels, minlength=2)
    raw = (1 - settings.beta) / (1 - settings.beta ** counts)
    weights = 2 * raw / raw.sum()
    return Plan(keras.losses.BinaryCrossentropy(), {0: float(weights[0]), 1: float(weights[1])})


def plan(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """The plan of the function the imbalance choice's `_target_` names (built-in or a user's)."""
    function, _ = config.plugin("imbalance", cfg)
    return function(config.settings("imbalance", cfg), labels)


def steps_per_epoch(plan: Plan, labels: np.ndarray, batch_size: int) -> int:
    """Batches in one training epoch: of the whole split, or under undersampling of twice its
    minority class (the epoch pipeline.batches draws), so epochs and the cosine schedule match it."""
    images = 2 * int(np.bincount(labels, minlength=2).min()) if plan.sampling == "under" else len(labels)
    return math.ceil(images / batch_size)
