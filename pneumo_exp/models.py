"""Networks, built from the `model` and `regularization` config groups."""

import keras
from keras import layers
from omegaconf import DictConfig


def build(model: DictConfig, regularization: DictConfig, input_shape: tuple[int, int, int]
          ) -> keras.Model:
    """The network named by `model=`, with BatchNorm/Dropout as `regularization=` says."""
    networks = {"seed_cnn": seed_cnn}
    return networks[model.name](input_shape, batch_norm=regularization.batch_norm,
                                dropout=regularization.dropout)


def seed_cnn(input_shape: tuple[int, int, int], batch_norm: bool = True,
             dropout: bool = True) -> keras.Model:
    """The classroom notebook's CNN; the switches remove its BatchNorm and/or Dropout layers.

    Takes pixels in 0..255 (rescaled inside, so a logged model scores raw images).
    """

    def normalize(x):
        return layers.BatchNormalization()(x) if batch_norm else x

    def drop(rate, x):
        return layers.Dropout(rate)(x) if dropout else x

    def conv_block(filters, x):
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        return layers.MaxPool2D()(normalize(x))

    def dense_block(units, rate, x):
        return drop(rate, normalize(layers.Dense(units, activation="relu")(x)))

    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
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
