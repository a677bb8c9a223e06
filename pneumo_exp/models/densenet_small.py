"""A compact DenseNet (Huang et al. 2017): in each dense block every layer takes all the feature maps
before it, so a small net reuses its features instead of relearning them; the network CheXNet made
the usual choice for chest X-rays (Rajpurkar et al. 2017, DenseNet-121), here at a size a CPU trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pneumo_exp import rule
from pneumo_exp.models.blocks import HeadAndInput, normalized_input, pooled_head

if TYPE_CHECKING:
    import keras

    from pneumo_exp.models.settings import Regularization


@dataclass
class DenseNetSmall(HeadAndInput):
    """model=densenet_small (conf/model/densenet_small.yaml)."""
    blocks: list[int] = rule(lambda v: len(v) > 0 and all(n > 0 for n in v),
                             "use a list of positive integers (layers per dense block), e.g. [4, 4, 4]")
    growth: int = rule(lambda v: v >= 1, "use an integer >= 1 (feature maps each layer adds)")


def build(settings: DenseNetSmall, regularization: Regularization, input_shape: tuple[int, int, int]
          ) -> keras.Model:
    """Stem (stride 2, then max-pool), dense blocks of BN-ReLU-conv layers joined by transitions
    that halve the maps and the image, global average pooling, dropout, sigmoid."""
    import keras
    from keras import layers

    def normalize(x):
        return layers.BatchNormalization()(x) if regularization.batch_norm else x

    def conv(filters, size, x):
        return layers.Conv2D(filters, size, padding="same", use_bias=not regularization.batch_norm)(
            layers.ReLU()(normalize(x)))

    inputs, x = normalized_input(input_shape, settings.input_norm)
    x = layers.MaxPool2D()(layers.Conv2D(2 * settings.growth, 3, strides=2, padding="same")(x))
    for i, depth in enumerate(settings.blocks):
        for _ in range(depth):
            x = layers.Concatenate()([x, conv(settings.growth, 3, x)])
        if i < len(settings.blocks) - 1:  # transition: half the maps, half the side
            x = layers.AveragePooling2D(2)(conv(x.shape[-1] // 2, 1, x))
    x = layers.ReLU()(normalize(x))
    head = pooled_head(x, settings.head_dropout * regularization.dropout_factor)
    return keras.Model(inputs, head, name="densenet_small")
