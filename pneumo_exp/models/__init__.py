"""Networks, built from the `model` and `regularization` config groups."""

import keras
from keras import layers
from omegaconf import DictConfig


def build(model: DictConfig, regularization: DictConfig, input_shape: tuple[int, int, int]
          ) -> keras.Model:
    """The network named by `model=`, with BatchNorm/Dropout as `regularization=` says."""
    dropout = regularization.dropout and regularization.dropout_scale
    if model.name == "seed_cnn":
        return seed_cnn(input_shape, regularization.batch_norm, dropout, model.input_norm)
    if model.name == "resnet_small":
        return resnet_small(input_shape, list(model.widths), regularization.batch_norm,
                            model.head_dropout * dropout, model.input_norm)
    return keras_app(input_shape, model.backbone, model.weights, model.head_dropout * dropout)


def normalized_input(input_shape: tuple[int, int, int], input_norm: str
                     ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The network's input (pixels 0..255, so a logged model scores raw images) and its normalized
    form: "rescale" divides by 255; "standardize" gives each image mean 0 and variance 1 (a
    one-group GroupNormalization without learned scale or offset), so that a global change of
    exposure (brightness, linear contrast) between hospitals cannot change the network's output
    (only a zero-filled border, as with_tta's shifted views have, is not changed with it)."""
    inputs = keras.Input(shape=input_shape)
    if input_norm == "standardize":
        return inputs, layers.GroupNormalization(groups=1, center=False, scale=False)(inputs)
    return inputs, layers.Rescaling(1.0 / 255)(inputs)


def seed_cnn(input_shape: tuple[int, int, int], batch_norm: bool = True,
             dropout: float = 1.0, input_norm: str = "rescale") -> keras.Model:
    """The classroom notebook's CNN; batch_norm=False removes its BatchNorm layers, dropout scales
    its Dropout rates (1 = the notebook's, 0 or False = no Dropout layers)."""

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


def resnet_small(input_shape: tuple[int, int, int], widths: list[int], batch_norm: bool = True,
                 head_dropout: float = 0.3, input_norm: str = "rescale") -> keras.Model:
    """A compact residual CNN: stem (stride 2), one basic residual block per width (stride 2 after
    the first), global average pooling, dropout, sigmoid. ~1.2 M parameters with the default widths."""

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

    inputs, x = normalized_input(input_shape, input_norm)
    x = layers.ReLU()(normalize(conv(widths[0], 2, x)))
    for i, filters in enumerate(widths):
        x = block(filters, 1 if i == 0 else 2, x)
    return keras.Model(inputs, pooled_head(x, head_dropout), name="resnet_small")


def keras_app(input_shape: tuple[int, int, int], backbone: str, weights: str | None,
              head_dropout: float = 0.2) -> keras.Model:
    """A keras.applications backbone (raw 0..255 input), global average pooling, dropout, sigmoid.
    weights="imagenet" downloads the ImageNet weights once into Keras' cache."""
    inputs = keras.Input(shape=input_shape)
    features = getattr(keras.applications, backbone)(include_top=False, weights=weights,
                                                     input_shape=input_shape)(inputs)
    return keras.Model(inputs, pooled_head(features, head_dropout), name=backbone.lower())


def pooled_head(features: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """Global average pooling, Dropout (if > 0) and the sigmoid probability of pneumonia (float32
    also under mixed precision)."""
    x = layers.GlobalAveragePooling2D()(features)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(1, activation="sigmoid", dtype="float32")(x)


def with_tta(model: keras.Model, shift: float) -> keras.Model:
    """Test-time augmentation: `model`'s probability averaged over the image and its four
    translations (up, down, left, right) by `shift` of its side, zero-filled as in training's
    augmentation. Standard layers only, so the logged model scores raw images the same way.
    shift=0 returns `model` itself."""
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
    if len(members) == 1:
        return members[0]
    for k, member in enumerate(members[1:], start=2):
        member.name = f"{member.name}_{k}"  # nested layers need unique names
    inputs = keras.Input(shape=members[0].input_shape[1:])
    return keras.Model(inputs, layers.Average()([member(inputs) for member in members]),
                       name=f"{members[0].name}_x{len(members)}")
