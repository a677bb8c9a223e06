"""A trained model's BatchNorm statistics re-estimated on a new site's images, without their labels
(bn: AdaBN, Li et al. 2016; Schneider et al. 2020): layer by layer in the order of the network, so
that each layer's statistics are those its input has once the layers before it are adapted. Only
images reach these functions, never a scored set's labels. The label-shift side (prior) is in
calibration.py; each method's decision and applicability in adaptation.py; Tent in tent.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np


def batchnorm_networks(model: keras.Model) -> list[keras.Model]:
    """The networks inside `model` (itself, an ensemble's members, the network a TTA wrapper
    averages, a keras.applications backbone) that hold BatchNorm layers directly, each once."""
    found, seen = [], set()

    def visit(net: keras.Model) -> None:
        if id(net) in seen:
            return
        seen.add(id(net))
        if any(isinstance(layer, keras.layers.BatchNormalization) for layer in net.layers):
            found.append(net)
        for layer in net.layers:
            if isinstance(layer, keras.Model):
                visit(layer)

    visit(model)
    return found


def set_batchnorm_statistics(net: keras.Model, pixels: np.ndarray, batch_size: int) -> int:
    """AdaBN on one network whose input is `pixels`: each BatchNorm layer's moving mean and variance
    become those of its input over all of `pixels`, in the network's order. Returns the count."""
    layers = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        upstream = keras.Model(net.input, layer.input)
        total = total_sq = None
        count = 0
        for start in range(0, len(pixels), batch_size):
            x = np.asarray(upstream(pixels[start:start + batch_size], training=False), dtype=np.float64)
            x = x.reshape(-1, x.shape[-1])  # every axis but the channels (BatchNorm's axis -1)
            total = x.sum(axis=0) + (0 if total is None else total)
            total_sq = (x * x).sum(axis=0) + (0 if total_sq is None else total_sq)
            count += len(x)
        mean = total / count
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(np.maximum(total_sq / count - mean * mean, 0).astype("float32"))
    return len(layers)


@contextlib.contextmanager
def batchnorm_adapted(model: keras.Model, pixels: np.ndarray, batch_size: int = 64) -> Iterator[int]:
    """`model` with AdaBN applied on `pixels` (each network holding BatchNorm on the plain images)
    inside the block, and as it was after it. Yields how many layers were adapted: 0 for a model
    without BatchNorm, which is then left unchanged."""
    networks = batchnorm_networks(model)
    saved = [(layer, [w.numpy() for w in (layer.moving_mean, layer.moving_variance)])
             for net in networks for layer in net.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    try:
        yield sum(set_batchnorm_statistics(net, pixels, batch_size) for net in networks)
    finally:
        for layer, (mean, variance) in saved:
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)


def renormalized_probabilities(model: keras.Model, images: np.ndarray, channels: int) -> np.ndarray:
    """The model's probabilities on `images` with its BatchNorm statistics set on those images."""
    from pneumo_exp.data.pipeline import model_input

    pixels = model_input(images, channels)
    with batchnorm_adapted(model, pixels):
        return model.predict(pixels, verbose=0).reshape(-1)
