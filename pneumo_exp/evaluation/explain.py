"""Where the model looks: Grad-CAM heatmaps (Selvaraju et al. 2017) and the images worth looking at."""

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from pneumo_exp.data.pipeline import model_input
from pneumo_exp.evaluation import plots

# Layers whose output is not a new view of the image: Grad-CAM looks at the last layer before them.
_NOT_FEATURES = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
                 keras.layers.SpatialDropout2D)


def feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The last layer with a spatial (4-D) output that is not pooling or dropout: a conv block's
    output, or a whole keras.applications backbone."""
    for layer in reversed(model.layers):
        if len(layer.output.shape) == 4 and not isinstance(layer, _NOT_FEATURES):
            return layer
    raise ValueError(f"{model.name} has no spatial layer for Grad-CAM")


def networks(model: keras.Model) -> list[keras.Model]:
    """The networks Grad-CAM looks into: inside a test-time-augmentation or ensemble wrapper (nested
    models with a probability, not a feature map, as output) its networks, else `model` itself."""
    inner = [layer for layer in model.layers
             if isinstance(layer, keras.Model) and len(layer.output.shape) == 2]
    return [network for layer in inner for network in networks(layer)] if inner else [model]


def gradcam(model: keras.Model, pixels: np.ndarray, classes: np.ndarray, batch: int = 32) -> np.ndarray:
    """One heatmap in [0, 1] per image, at the image's size, for its class in `classes` (1 pneumonia,
    0 normal). Callers pass the class the scored model (its test-time augmentation and all its
    members) predicted, from the probabilities they already hold, so that a heatmap explains the
    class its shown probability gives at the threshold. For an ensemble, the mean of its members'
    heatmaps (with test-time augmentation: on the plain image)."""
    if len(pixels) > batch:
        return np.concatenate([gradcam(model, pixels[i:i + batch], classes[i:i + batch], batch)
                               for i in range(0, len(pixels), batch)])
    probes = [keras.Model(network.inputs, [feature_layer(network).output, network.outputs[0]])
              for network in networks(model)]
    inputs = tf.convert_to_tensor(pixels, tf.float32)
    explained = tf.convert_to_tensor(np.asarray(classes).reshape(-1), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        outputs = [probe(inputs, training=False) for probe in probes]
        scores = [explained * p[:, 0] + (1 - explained) * (1 - p[:, 0]) for _, p in outputs]
    cams = []
    for (features, _), score in zip(outputs, scores, strict=True):
        weights = tf.reduce_mean(tape.gradient(score, features), axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]
        cams.append(cam / (tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True) + 1e-12))
    return np.mean([tf.image.resize(cam, pixels.shape[1:3]).numpy()[..., 0] for cam in cams], axis=0)


def sample(labels: np.ndarray, predicted: np.ndarray, per_kind: int = 2, seed: int = 0) -> np.ndarray:
    """A fixed sample of test indices: `per_kind` each of true positives, true negatives, false
    positives and false negatives (fewer where there are fewer)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in (1, 0):
        for guess in (label, 1 - label):
            where = np.flatnonzero((labels == label) & (predicted == guess))
            picked += sorted(rng.choice(where, min(per_kind, len(where)), replace=False).tolist())
    return np.array(picked, dtype=int)


def figures(model: keras.Model, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
            threshold: float, channels: int, names: np.ndarray | None) -> dict[str, Figure]:
    """`gradcam`: heatmaps over a fixed sample of test images (right and wrong, both classes);
    `worst_misclassified`: the mistakes the model was surest about, with their heatmaps. Each image is
    titled (title) so that a reader can find it among the split's files (`names`, None: by index)."""
    predicted = (probabilities >= threshold).astype(int)
    caption = ("true class, file, p = predicted probability of pneumonia → the decision at the threshold\n"
               f"chosen on validation ({threshold:.3f}); below each image, Grad-CAM for that decision")
    out = {}
    for name, picked in (("gradcam", sample(labels, predicted)),
                         ("worst_misclassified", worst_mistakes(labels, probabilities, threshold))):
        if len(picked):
            pixels = model_input(images[picked], channels)
            titles = [title(labels[i], f"index {i}" if names is None else str(names[i]), probabilities[i],
                            predicted[i]) for i in picked]
            out[name] = plots.heatmaps(images[picked], gradcam(model, pixels, predicted[picked]), titles,
                                       caption)
    return out


def title(label: int, name: str, probability: float, decision: int, width: int = 32) -> str:
    """Three lines, e.g. true NORMAL / IM-0123.jpeg / p=0.970 → pneumonia: the true class, the file's
    base name (its middle cut to fit `width` characters at 10 pt above an image) and the probability of
    pneumonia with the decision it gave, so that a reader tells the truth from the guess."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if len(base) > width:
        base = f"{base[:width // 2 - 1]}…{base[-(width // 2):]}"
    return (f"true {plots.CLASS_NAMES[int(label)].upper()}\n{base}\n"
            f"p={probability:.3f} → {plots.CLASS_NAMES[int(decision)]}")


def worst_mistakes(labels: np.ndarray, probabilities: np.ndarray, threshold: float, n: int = 8
                   ) -> np.ndarray:
    """Indices of the `n` misclassified images the model was surest about, surest first."""
    wrong = np.flatnonzero((probabilities >= threshold) != labels.astype(bool))
    return wrong[np.argsort(-np.abs(probabilities[wrong] - threshold), kind="stable")][:n]
