"""Tent (Wang et al. 2021, "Tent: fully test-time adaptation by entropy minimization"): a BatchNorm
network adapted to a set's images, without their labels, by lowering the entropy of its predictions
on them through its BatchNorm layers' scale and offset alone (every other weight frozen).

As in the paper, each layer normalizes with the set's own statistics (here of the whole set, as
AdaBN sets them: adapt.batchnorm_adapted; re-estimated after each pass, since the scales and
offsets upstream of a layer move its input), and the affine parameters take a few Adam steps on
the mean binary entropy of the set's predictions. Deterministic for a given seed (the batch order);
everything is put back as it was when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np

from pneumo_exp.evaluation import adapt

LEARNING_RATE = 1e-3  # the paper's, for Adam
STEPS = 50  # Adam steps, passing over the set as often as that takes: the paper's CIFAR-10-C runs
BATCH_SIZE = 64  # took 78 steps of 128 images (one pass over a corruption's 10,000)


def affine_parameters(model: keras.Model) -> list[keras.Variable]:
    """The scale and offset of every BatchNorm layer the model holds (adapt.batchnorm_networks)."""
    return [weight for net in adapt.batchnorm_networks(model) for layer in net.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for weight in (layer.gamma, layer.beta) if weight is not None]


def mean_entropy(probabilities):
    """The mean binary entropy of sigmoid outputs, in nats."""
    p = keras.ops.clip(probabilities, 1e-6, 1 - 1e-6)
    return keras.ops.mean(-p * keras.ops.log(p) - (1 - p) * keras.ops.log(1 - p))


def minimize_entropy(model: keras.Model, pixels: np.ndarray, parameters: list[keras.Variable],
                     seed: int) -> None:
    """STEPS Adam steps on the mean entropy of shuffled batches of `pixels`, through `parameters`;
    the set's statistics re-estimated after each pass over it."""
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(LEARNING_RATE)
    rng = np.random.default_rng(seed)
    per_pass = -(-len(pixels) // BATCH_SIZE)
    for step in range(STEPS):
        if step % per_pass == 0:
            order = rng.permutation(len(pixels))
        start = (step % per_pass) * BATCH_SIZE
        with tf.GradientTape() as tape:
            loss = mean_entropy(model(pixels[order[start:start + BATCH_SIZE]], training=False))
        optimizer.apply(tape.gradient(loss, parameters), parameters)
        if (step + 1) % per_pass == 0 or step + 1 == STEPS:
            for net in adapt.batchnorm_networks(model):
                adapt.set_batchnorm_statistics(net, pixels, BATCH_SIZE)


@contextlib.contextmanager
def tent_adapted(model: keras.Model, pixels: np.ndarray, seed: int = 0) -> Iterator[int]:
    """`model` adapted by Tent on `pixels` inside the block, as it was after it. Yields how many
    parameters were adapted: 0 for a model without BatchNorm, which is left unchanged."""
    parameters = affine_parameters(model)
    saved = [weight.numpy() for weight in parameters]
    with adapt.batchnorm_adapted(model, pixels, BATCH_SIZE):
        try:
            if parameters:
                minimize_entropy(model, pixels, parameters, seed)
            yield len(parameters)
        finally:
            for weight, value in zip(parameters, saved, strict=True):
                weight.assign(value)


def tent_probabilities(model: keras.Model, images: np.ndarray, channels: int, seed: int = 0) -> np.ndarray:
    """The model's probabilities on `images` once Tent has adapted it to them."""
    from pneumo_exp.data.pipeline import model_input

    pixels = model_input(images, channels)
    with tent_adapted(model, pixels, seed):
        return model.predict(pixels, batch_size=BATCH_SIZE, verbose=0).reshape(-1)
