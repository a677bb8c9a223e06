"""A trained model adapted to a new site's images without their labels, so that its scores there can
be read beside the plain ones (never instead of them). Only images and the model's probabilities
reach these functions, never a scored set's labels: the adaptation is transductive, not supervised.

- prior (label shift): the set's share of pneumonia is estimated by EM on the model's probabilities
  (Saerens, Latinne & Decaestecker 2002), the probabilities are re-weighted to it, and each image is
  called pneumonia where its re-weighted probability is at least 1/2 (their maximum a posteriori
  rule: the threshold that maximizes accuracy at the estimated share, moved from the one at
  validation's share by the change in prior odds). EM needs calibrated probabilities, so they are
  first recalibrated on validation (Platt scaling; with EM, as in Alexandari et al. 2020), whose
  share of pneumonia is the prior they are posteriors under. The run's own threshold (youden, a
  sensitivity target) serves a goal that no prior changes, so it is not the one moved.
- bn (covariate shift): every BatchNorm layer's mean and variance are re-estimated on the set's
  images (AdaBN: Li et al. 2016; Schneider et al. 2020), layer by layer in the order of the network,
  so that each layer's statistics are those its input has once the layers before it are adapted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression

from pneumo_exp.config import ADAPT_METHODS

EPSILON = 1e-6  # probabilities are clipped to [EPSILON, 1 - EPSILON] before taking their logit


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPSILON, 1 - EPSILON)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Calibration:
    """Platt scaling fitted on validation: p -> sigmoid(slope * logit(p) + intercept), and the
    validation share of pneumonia, the prior those calibrated probabilities are posteriors under."""
    slope: float
    intercept: float
    prior: float

    def __call__(self, p: np.ndarray | float) -> np.ndarray:
        return 1 / (1 + np.exp(-(self.slope * logit(p) + self.intercept)))


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray) -> Calibration:
    """Platt scaling on validation (labels allowed there: validation is where the run chooses). The
    logits are standardized for the fit, so that a model whose probabilities vary in the fifth
    decimal is still fitted. A model whose validation scores do not vary, or rank backwards, gets
    the identity map, so that decisions stay monotone in its probability."""
    x = logit(probabilities)
    centre, spread = float(np.mean(x)), float(np.std(x))
    prior = float(np.mean(labels))
    if np.ptp(x) == 0:
        return Calibration(1.0, 0.0, prior)
    fit = LogisticRegression(C=1e6).fit(((x - centre) / spread)[:, None], labels)
    slope = float(fit.coef_[0, 0]) / spread
    if slope <= 0:
        return Calibration(1.0, 0.0, prior)
    return Calibration(slope, float(fit.intercept_[0]) - slope * centre, prior)


def reweighted(calibrated: np.ndarray, source_prior: float, target_prior: float) -> np.ndarray:
    """Posteriors under `source_prior` turned into posteriors under `target_prior` (Bayes' rule with
    the class-conditional likelihoods unchanged)."""
    positive = calibrated * target_prior / source_prior
    negative = (1 - calibrated) * (1 - target_prior) / (1 - source_prior)
    return positive / (positive + negative)


def estimate_prevalence(calibrated: np.ndarray, source_prior: float, tolerance: float = 1e-8,
                        max_iterations: int = 10_000) -> float:
    """Saerens et al.'s EM: the prior that, once the posteriors are re-weighted to it, equals their
    mean. Starts from the source prior; each step re-weights and averages."""
    prior = source_prior
    for _ in range(max_iterations):
        updated = float(np.mean(reweighted(calibrated, source_prior, prior)))
        if abs(updated - prior) < tolerance:
            return updated
        prior = updated
    return prior


BAYES_THRESHOLD = 0.5  # on posteriors at the set's prior: the decision that maximizes accuracy


def prior_adapted(probabilities: np.ndarray, calibration: Calibration) -> tuple[np.ndarray, float]:
    """(the probabilities re-weighted from validation's prior to the set's, the set's estimated
    prevalence); decide them at BAYES_THRESHOLD."""
    calibrated = calibration(probabilities)
    prevalence = estimate_prevalence(calibrated, calibration.prior)
    return reweighted(calibrated, calibration.prior, prevalence), prevalence


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



@dataclass(frozen=True)
class OperatingPoint:
    """Where a model's probabilities are cut, and how they are calibrated: both chosen on validation,
    for the plain model and for the model renormalized on each set it scores (bn)."""
    threshold: float
    calibration: Calibration


@dataclass(frozen=True)
class Adapted:
    """A set's adapted probabilities, the threshold they are decided at, and its estimated share."""
    probabilities: np.ndarray
    threshold: float
    prevalence: float  # the estimated share of pneumonia (nan for bn alone, which estimates none)


def decided_at_prior(probabilities: np.ndarray, calibration: Calibration) -> Adapted:
    """prior adaptation of `probabilities`, decided at BAYES_THRESHOLD."""
    adapted, prevalence = prior_adapted(probabilities, calibration)
    return Adapted(adapted, BAYES_THRESHOLD, prevalence)


def renormalized_probabilities(model: keras.Model, images: np.ndarray, channels: int) -> np.ndarray:
    """The model's probabilities on `images` with its BatchNorm statistics set on those images."""
    from pneumo_exp.data.pipeline import model_input

    pixels = model_input(images, channels)
    with batchnorm_adapted(model, pixels):
        return model.predict(pixels, verbose=0).reshape(-1)


def adapted_predictions(model: keras.Model, images: np.ndarray, probabilities: np.ndarray,
                        plain: OperatingPoint, renormalized: OperatingPoint | None, choice: str,
                        channels: int) -> dict[str, Adapted]:
    """A set's `images` (with the model's plain `probabilities` of them) scored by each method the
    eval.adapt `choice` names (config.ADAPT_METHODS): prior on the plain probabilities; bn by the
    model renormalized on the images, cut where the model renormalized on validation's images was
    (`renormalized`: a renormalized model's probabilities move, so the plain threshold does not fit
    them); both, prior on bn's probabilities. The set's labels never reach here."""
    methods = ADAPT_METHODS[choice]
    found = {}
    if "prior" in methods:
        found["prior"] = decided_at_prior(probabilities, plain.calibration)
    if "bn" in methods:
        found["bn"] = Adapted(renormalized_probabilities(model, images, channels),
                              renormalized.threshold, float("nan"))
    if "both" in methods:
        found["both"] = decided_at_prior(found["bn"].probabilities, renormalized.calibration)
    return found


@dataclass(frozen=True)
class Shift:
    """How far a scored set looks from training, from the model's probabilities alone."""
    estimated_prevalence: float  # EM on the plain probabilities (see prior_adapted)
    mean_probability: float
    suspected: bool  # either differs from training's by more than its margin


def shift_check(probabilities: np.ndarray, calibration: Calibration, train_prevalence: float,
                val_mean_probability: float, prevalence_margin: float, probability_margin: float) -> Shift:
    """The set's estimated share of pneumonia against training's, its mean predicted probability
    against validation's, and whether either moved by more than its margin."""
    prevalence = prior_adapted(probabilities, calibration)[1]
    mean = float(np.mean(probabilities))
    suspected = (abs(prevalence - train_prevalence) > prevalence_margin
                 or abs(mean - val_mean_probability) > probability_margin)
    return Shift(prevalence, mean, suspected)


def shift_warning(name: str, shift: Shift, train_prevalence: float, val_mean_probability: float) -> str:
    """One line saying that a set looks shifted, by how much, and what to do about it."""
    return (f"warning: the {name} set looks shifted from training: estimated pneumonia share "
            f"{shift.estimated_prevalence:.2f} (training {train_prevalence:.2f}), mean predicted "
            f"probability {shift.mean_probability:.2f} (validation {val_mean_probability:.2f}); its "
            "scores may not carry over: score it adapted with eval.adapt=both (or predict --adapt)")
