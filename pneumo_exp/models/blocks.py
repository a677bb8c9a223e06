"""What the built-in networks share: how the input is normalized, the pooled sigmoid head, and the
settings and checks that go with them. Keras is imported inside the functions, so that reading a
network's schema (config.check) loads no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from omegaconf import DictConfig

from pneumo_exp import invalid, is_number, rule

if TYPE_CHECKING:
    import keras

InputNorm = Literal["rescale", "standardize"]
SMALLEST_INPUT = 32  # each built-in network halves the image four or five times


INPUT_NORM_FIX = "use rescale (pixels / 255) or standardize (each image to mean 0, variance 1)"


def head_dropout_rule() -> Any:
    return rule(lambda v: v >= 0, "use a number >= 0 (times regularization.dropout_scale)")


def check_head_dropout(rate: float, settings: dict[str, Any]) -> None:
    """The head's Dropout rate times regularization's scale stays below 1."""
    scale = settings["regularization"].dropout_factor
    if not (is_number(rate) and rate * scale < 1):
        raise invalid("model.head_dropout", rate,
                      f"use a number >= 0 that times regularization.dropout_scale={scale} stays below 1")


@dataclass
class HeadAndInput:
    """The settings of a network built from normalized_input and pooled_head (resnet_small,
    densenet_small): the head's Dropout and the input's normalization, beside its own."""
    head_dropout: float = head_dropout_rule()
    input_norm: InputNorm = rule(None, INPUT_NORM_FIX)
    min_image_size: ClassVar[int] = SMALLEST_INPUT

    def check_with(self, cfg: DictConfig, settings: dict[str, Any]) -> None:
        check_head_dropout(self.head_dropout, settings)


def normalized_input(input_shape: tuple[int, int, int], input_norm: str
                     ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The network's input (pixels 0..255, so a logged model scores raw images) and its normalized
    form: "rescale" divides by 255; "standardize" gives each image mean 0 and variance 1 (a
    one-group GroupNormalization without learned scale or offset), so that a global change of
    exposure (brightness, linear contrast) between hospitals cannot change the network's output
    (only a zero-filled border, as with_tta's shifted views have, is not changed with it)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    if input_norm == "standardize":
        return inputs, layers.GroupNormalization(groups=1, center=False, scale=False)(inputs)
    return inputs, layers.Rescaling(1.0 / 255)(inputs)


def pooled_head(features: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """Global average pooling, Dropout (if > 0) and the sigmoid probability of pneumonia (float32
    also under mixed precision)."""
    from keras import layers

    x = layers.GlobalAveragePooling2D()(features)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(1, activation="sigmoid", dtype="float32")(x)

