"""The classroom notebook's network: SeparableConv blocks, a dense head, a sigmoid output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pneumo_exp import rule
from pneumo_exp.models.blocks import INPUT_NORM_FIX, SMALLEST_INPUT, InputNorm, normalized_input

if TYPE_CHECKING:
    import keras

    from pneumo_exp.models.settings import Regularization


@dataclass
class SeedCNN:
    """model=seed_cnn (conf/model/seed_cnn.yaml)."""
    input_norm: InputNorm = rule(None, INPUT_NORM_FIX)
    min_image_size: ClassVar[int] = SMALLEST_INPUT


def build(settings: SeedCNN, regularization: Regularization, input_shape: tuple[int, int, int]
          ) -> keras.Model:
    """The notebook's CNN; regularization.batch_norm=false removes its BatchNorm layers, its
    dropout_scale scales the Dropout rates (the notebook's at 1; none without Dropout)."""
    return seed_cnn(input_shape, regularization.batch_norm, regularization.dropout_factor,
                    settings.input_norm)


def seed_cnn(input_shape: tuple[int, int, int], batch_norm: bool = True,
             dropout: float = 1.0, input_norm: str = "rescale") -> keras.Model:
    """The classroom notebook's CNN; batch_norm=False removes its BatchNorm layers, dropout scales
    its Dropout rates (1 = the notebook's, 0 or False = no Dropout layers)."""
    import keras
    from keras import layers

    def normalize(x):
        return layers.BatchNormalization()(x) if batch_norm else x

    def drop(rate, x):
        return layers.Dropout(rate * dropout)(x) if dropout else x

    def conv_block(filters, x):
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        return layers.MaxPool2D()(normalize(x))

    def dense_block(units, rate, x):
        return drop(rate, normalize(layers.Dense(units, activation="relu")(x)))

    inputs, x = normalized_input(input_shape, input_norm)
    x = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = layers.MaxPool2D()(x)
    x = conv_block(32, x)
    x = conv_block(64, x)
    x = drop(0.2, conv_block(128, x))
    x = drop(0.2, conv_block(256, x))
    x = layers.Flatten()(x)
    x = dense_block(512, 0.7, x)
    x = dense_block(128, 0.5, x)
    x = dense_block(64, 0.3, x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32")(x)  # float32 under mixed precision
    return keras.Model(inputs, outputs, name="seed_cnn")
