"""A compact residual CNN (He et al. 2016 blocks) that trains from scratch fast on a CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pneumo_exp import rule
from pneumo_exp.models.blocks import HeadAndInput, normalized_input, pooled_head

if TYPE_CHECKING:
    import keras

    from pneumo_exp.models.settings import Regularization


@dataclass
class ResnetSmall(HeadAndInput):
    """model=resnet_small (conf/model/resnet_small.yaml)."""
    widths: list[int] = rule(lambda v: len(v) > 0 and all(w > 0 for w in v),
                             "use a list of positive integers, e.g. [32, 64, 128]")


def build(settings: ResnetSmall, regularization: Regularization, input_shape: tuple[int, int, int]
          ) -> keras.Model:
    """Stem (stride 2), one basic residual block per width (stride 2 after the first), global
    average pooling, dropout, sigmoid. ~1.2 M parameters with the default widths."""
    import keras
    from keras import layers

    batch_norm = regularization.batch_norm

    def normalize(x):
        return layers.BatchNormalization()(x) if batch_norm else x

    def conv(filters, stride, x):
        return layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=not batch_norm)(x)

    def block(filters, stride, x):
        shortcut = x
        y = layers.ReLU()(normalize(conv(filters, stride, x)))
        y = normalize(conv(filters, 1, y))
        if stride != 1 or x.shape[-1] != filters:
            shortcut = normalize(layers.Conv2D(filters, 1, strides=stride, use_bias=not batch_norm)(x))
        return layers.ReLU()(layers.Add()([y, shortcut]))

    inputs, x = normalized_input(input_shape, settings.input_norm)
    x = layers.ReLU()(normalize(conv(settings.widths[0], 2, x)))
    for i, filters in enumerate(settings.widths):
        x = block(filters, 1 if i == 0 else 2, x)
    head = pooled_head(x, settings.head_dropout * regularization.dropout_factor)
    return keras.Model(inputs, head, name="resnet_small")
