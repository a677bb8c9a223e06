"""The four answers to class imbalance (~3 pneumonia per normal): each decides the loss, the class
weights and whether training batches are rebalanced, from the training split's labels only."""

from dataclasses import dataclass

import keras
import numpy as np
from omegaconf import DictConfig
from sklearn.utils.class_weight import compute_class_weight


@dataclass(frozen=True)
class Plan:
    loss: keras.losses.Loss
    class_weight: dict[int, float] | None = None
    balanced_batches: bool = False


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
    return Plan(keras.losses.BinaryCrossentropy(), balanced_batches=True)


METHODS = {"none": none, "class_weight": class_weight, "focal": focal, "oversample": oversample}


def plan(cfg: DictConfig, labels: np.ndarray) -> Plan:
    """The plan of the method named by `imbalance=`."""
    return METHODS[cfg.name](cfg, labels)
