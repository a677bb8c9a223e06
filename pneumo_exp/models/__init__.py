"""Models: the networks (one module each, named by a model choice's `_target_`), the imbalance
methods, augmentation, and training. This file builds the chosen network and combines networks
(test-time augmentation, ensembles); Keras is imported inside its functions, so that reading a
network's schema (config.check) loads no TensorFlow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pneumo_exp import config

if TYPE_CHECKING:
    import keras


def build(model: DictConfig, regularization: DictConfig, input_shape: tuple[int, int, int]
          ) -> keras.Model:
    """The network the model choice's `_target_` names (a built-in one or a user's: the same path),
    given its settings and regularization's."""
    function, _ = config.plugin("model", model)
    return function(config.settings("model", model), config.settings("regularization", regularization),
                    input_shape)


def fetch(model: DictConfig) -> None:
    """What the network downloads (keras_app's ImageNet weights), fetched before the data loads:
    a missing network stops the run in seconds, not after the data. A model's schema says what by
    a `fetch(self)` method (docs/extending.md); most have none."""
    settings = config.settings("model", model)
    if callable(getattr(settings, "fetch", None)):
        settings.fetch()


def with_tta(model: keras.Model, shift: float) -> keras.Model:
    """Test-time augmentation: `model`'s probability averaged over the image and its four
    translations (up, down, left, right) by `shift` of its side, zero-filled as in training's
    augmentation. Standard layers only, so the logged model scores raw images the same way.
    shift=0 returns `model` itself."""
    import keras
    from keras import layers

    pad = round(shift * model.input_shape[1])
    if not pad:
        return model
    inputs = keras.Input(shape=model.input_shape[1:])
    padded = layers.ZeroPadding2D(pad)(inputs)
    views = [inputs] + [layers.Cropping2D(((pad + dy, pad - dy), (pad + dx, pad - dx)))(padded)
                        for dy, dx in ((pad, 0), (-pad, 0), (0, pad), (0, -pad))]
    return keras.Model(inputs, layers.Average()([model(view) for view in views]), name=f"{model.name}_tta")


def averaged(members: list[keras.Model]) -> keras.Model:
    """A deep ensemble (Lakshminarayanan et al. 2017): the mean probability of networks trained
    from different seeds, which varies less between runs and is better calibrated under dataset
    shift (Ovadia et al. 2019) than one network. One member returns that member itself."""
    import keras
    from keras import layers

    if len(members) == 1:
        return members[0]
    for k, member in enumerate(members[1:], start=2):
        member.name = f"{member.name}_{k}"  # nested layers need unique names
    inputs = keras.Input(shape=members[0].input_shape[1:])
    return keras.Model(inputs, layers.Average()([member(inputs) for member in members]),
                       name=f"{members[0].name}_x{len(members)}")
