"""A keras.applications backbone with a sigmoid head."""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from omegaconf import DictConfig

from pneumo_exp import UserError, invalid, rule
from pneumo_exp.models.blocks import SMALLEST_INPUT, check_head_dropout, head_dropout_rule, pooled_head

if TYPE_CHECKING:
    import keras

    from pneumo_exp.models.settings import Regularization

# The backbones that take raw 0..255 pixels (they rescale inside the model).
RAW_PIXEL_BACKBONES = (*(f"EfficientNetB{i}" for i in range(8)),
                       *(f"EfficientNetV2{v}" for v in ("B0", "B1", "B2", "B3", "S", "M", "L")),
                       *(f"ConvNeXt{v}" for v in ("Tiny", "Small", "Base", "Large", "XLarge")),
                       "MobileNetV3Small", "MobileNetV3Large")


@dataclass
class KerasApp:
    """model=keras_app (conf/model/keras_app.yaml)."""
    backbone: str = rule(lambda v: v in RAW_PIXEL_BACKBONES, "use a keras.applications net that takes "
                         "0..255 pixels: EfficientNetB0-B7, EfficientNetV2B0-B3/S/M/L, "
                         "ConvNeXtTiny/Small/Base/Large/XLarge, MobileNetV3Small/Large")
    weights: Literal["imagenet", None]
    head_dropout: float = head_dropout_rule()
    min_image_size: ClassVar[int] = SMALLEST_INPUT

    def fetch(self) -> None:
        """The ImageNet weights into Keras' cache (the backbone built once, at its smallest input),
        as the run opens: without a network the run then stops before its data loads."""
        if self.weights is not None:
            backbone(self, (SMALLEST_INPUT, SMALLEST_INPUT, 3))

    def check_with(self, cfg: DictConfig, settings: dict[str, Any]) -> None:
        """ImageNet weights take 3 channels; a backbone keeps its own BatchNorm."""
        check_head_dropout(self.head_dropout, settings)
        if self.weights is not None and cfg.data.channels != 3:
            raise invalid("data.channels", cfg.data.channels, "ImageNet weights need data.channels=3")
        if not settings["regularization"].batch_norm:
            raise invalid("regularization", cfg.regularization.name, "keras_app backbones keep their own "
                          "BatchNorm: use regularization=bn_dropout or bn_only")


def build(settings: KerasApp, regularization: Regularization, input_shape: tuple[int, int, int]
          ) -> keras.Model:
    """The backbone (raw 0..255 input), global average pooling, dropout, sigmoid.
    weights="imagenet" downloads the ImageNet weights once into Keras' cache."""
    import keras

    inputs = keras.Input(shape=input_shape)
    features = backbone(settings, input_shape)(inputs)
    head = pooled_head(features, settings.head_dropout * regularization.dropout_factor)
    return keras.Model(inputs, head, name=settings.backbone.lower())


def backbone(settings: KerasApp, input_shape: tuple[int, int, int]) -> keras.Model:
    """The keras.applications net, its ImageNet weights read from Keras' cache or downloaded there
    once: without a network that is one line saying so, not the tracebacks of Keras' download."""
    import keras

    try:
        return getattr(keras.applications, settings.backbone)(
            include_top=False, weights=settings.weights, input_shape=input_shape)
    except Exception as error:
        cause = error if isinstance(error, OSError) else error.__context__  # Keras wraps URLError
        if not isinstance(cause, (urllib.error.URLError, ConnectionError, TimeoutError)):
            raise
        cache = os.path.join(os.environ.get("KERAS_HOME", "~/.keras"), "models")
        raise UserError(f"cannot download the ImageNet weights of {settings.backbone} "
                        f"({getattr(cause, 'reason', cause)}): connect to the network once (Keras "
                        f"keeps them in {cache}) or use model.weights=null") from None
