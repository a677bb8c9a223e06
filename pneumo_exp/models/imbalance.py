"""The five answers to class imbalance (~3 pneumonia per normal): each decides the loss, the class
weights and whether training batches are over- or undersampled, from the training split's labels
only."""

import math
from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np
from omegaconf import DictConfig
from sklearn.utils.class_weight import compute_class_weight


@dataclass(frozen=True)
class Plan:
    loss: keras.losses.Loss
    class_weight: dict[int, float] | None = None
    sampling: Literal["none", "over", "under"] = "none"  # pipeline.batches(sampling=)


def none(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """Plain binary cross-entropy."""
    return Plan(keras.losses.BinaryCrossentropy())


def class_weight(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """The notebook's weights n_total / (2 * n_class), i.e. scikit-learn's "balanced"."""
    weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    return Plan(keras.losses.BinaryCrossentropy(), {0: float(weights[0]), 1: float(weights[1])})


def focal(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """Binary focal loss; alpha weighs pneumonia, 1 - alpha normal."""
    loss = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=cfg.alpha,
                                                gamma=cfg.gamma)
    return Plan(loss)


def oversample(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """Binary cross-entropy on batches that draw both classes equally often."""
    return Plan(keras.losses.BinaryCrossentropy(), sampling="over")


def undersample(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """Binary cross-entropy on epochs of every minority image and a fresh, equal-size random subset
    of the majority class: balanced without repeating an image within an epoch."""
    return Plan(keras.losses.BinaryCrossentropy(), sampling="under")


METHODS = {"none": none, "class_weight": class_weight, "focal": focal, "oversample": oversample,
           "undersample": undersample}


def plan(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """The plan of the method named by `imbalance=`."""
    return METHODS[cfg.name](cfg, labels)


def steps_per_epoch(plan: Plan, labels: np.ndarray, batch_size: int) -> int:
    """Batches in one training epoch: of the whole split, or under undersampling of twice its
    minority class (the epoch pipeline.batches draws), so epochs and the cosine schedule match it."""
    images = 2 * int(np.bincount(labels, minlength=2).min()) if plan.sampling == "under" else len(labels)
    return math.ceil(images / batch_size)
