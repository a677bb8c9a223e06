"""Each label-free method (eval.adapt) on one scored set: validation seen the same way (its operating
point), the set's adapted scores, and whether the method applies there (applicability.py), so that a
method whose assumption fails is withheld, and the shift warning recommends one that applies.

A method is a way of scoring (TRANSFORM: the plain model, the model renormalized on the set, the
model adapted by Tent) and a decision: prior re-weights calibrated probabilities to the share EM
estimates and decides at 1/2 (adapt.py); bn and tent cut where the model adapted the same way to
validation's images was cut. Only the set's images and scores reach here, never its labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pneumo_exp.evaluation import adapt, applicability, tent
from pneumo_exp.evaluation.applicability import Verdict
from pneumo_exp.evaluation.calibration import BAYES_THRESHOLD, Calibration, fit_calibration, prior_adapted

if TYPE_CHECKING:
    import keras

# How each method scores a set.
TRANSFORM = {"prior": "plain", "bn": "bn", "tent": "tent"}
# Validation's labels and its probabilities under each transform, logged by the run for predict --adapt.
VALIDATION_SCORES = "adaptation/validation_scores.csv"
# The warning recommends the first method that applies: the one that adapts the most.
PREFERENCE = ("tent", "bn", "prior")


def metric_prefix(transform: str) -> str:
    """How the run's metrics name a transform's operating point: calibration_slope for the plain
    model's, bn_calibration_slope, tent_threshold, ..."""
    return "" if transform == "plain" else f"{transform}_"


@dataclass(frozen=True)
class OperatingPoint:
    """Validation scored one way (plain, bn, tent): its labels and probabilities, what the
    applicability check compares a set with; the threshold and Platt calibration chosen on them."""
    threshold: float
    calibration: Calibration
    val_labels: np.ndarray
    val_probabilities: np.ndarray


@dataclass(frozen=True)
class Adapted:
    """A set's adapted probabilities, the threshold they are decided at, its estimated share of
    pneumonia (nan for bn and tent, which estimate none), and the applicability verdict."""
    probabilities: np.ndarray
    threshold: float
    prevalence: float
    verdict: Verdict


def transformed(transform: str, model: keras.Model, images: np.ndarray, probabilities: np.ndarray,
                channels: int, seed: int) -> np.ndarray:
    """The set's probabilities scored by `transform` (`probabilities`: the plain model's)."""
    if transform == "plain":
        return probabilities
    if transform == "bn":
        return adapt.renormalized_probabilities(model, images, channels)
    return tent.tent_probabilities(model, images, channels, seed)


def operating_points(methods: tuple[str, ...], model: keras.Model, val_images: np.ndarray,
                     val_labels: np.ndarray, val_probabilities: np.ndarray, plain_threshold: float,
                     choose_threshold, channels: int, seed: int) -> dict[str, OperatingPoint]:
    """Validation scored by each transform `methods` use, with its operating point:
    `choose_threshold(labels, probabilities)` for bn and tent, the run's own for the plain model."""
    points = {}
    for transform in dict.fromkeys(["plain", *(TRANSFORM[m] for m in methods)]):
        p = transformed(transform, model, val_images, val_probabilities, channels, seed)
        threshold = plain_threshold if transform == "plain" else choose_threshold(val_labels, p)
        points[transform] = OperatingPoint(threshold, fit_calibration(val_labels, p), val_labels, p)
    return points


def decided(method: str, probabilities: np.ndarray, point: OperatingPoint, verdict: Verdict) -> Adapted:
    """The method's decision on its transformed probabilities."""
    if method == "prior":
        reweighted, prevalence = prior_adapted(probabilities, point.calibration)
        return Adapted(reweighted, BAYES_THRESHOLD, prevalence, verdict)
    return Adapted(probabilities, point.threshold, float("nan"), verdict)


def adapted_predictions(methods: tuple[str, ...], model: keras.Model, images: np.ndarray,
                        probabilities: np.ndarray, points: dict[str, OperatingPoint], channels: int,
                        alpha: float, min_images: int, seed: int) -> dict[str, Adapted]:
    """The set's `images` (with the plain model's `probabilities`) scored by each of `methods`,
    each with its applicability verdict. The set's labels never reach here."""
    scored: dict[str, np.ndarray] = {}
    found = {}
    for method in methods:
        transform = TRANSFORM[method]
        if transform not in scored:
            scored[transform] = transformed(transform, model, images, probabilities, channels, seed)
        point = points[transform]
        verdict = applicability.check(scored[transform], point.val_probabilities, point.val_labels,
                                      point.calibration, alpha, min_images, seed)
        found[method] = decided(method, scored[transform], point, verdict)
    return found


def recommended(adapted: dict[str, Adapted]) -> str | None:
    """The method the warning recommends: the first of PREFERENCE that was checked and applies."""
    return next((m for m in PREFERENCE if m in adapted and adapted[m].verdict.applies), None)


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


def advice(name: str, adapted: dict[str, Adapted], key: str = "eval.adapt") -> str:
    """What to do about a shifted set: the adaptation that applies to it, or, where none that was
    checked does, a labelled sample of its images."""
    best = recommended(adapted)
    sample = f"label a sample of its images (eval.labelled={{{name}:50}}) to set its threshold"
    if best:
        return f"{best} applies to it: score it with {key}={best}"
    if adapted:
        return f"no label-free adaptation applies to it (checked: {', '.join(adapted)}): {sample}"
    return f"check which adaptation applies with {key}=all, or {sample}"


def shift_warning(name: str, shift: Shift, train_prevalence: float, val_mean_probability: float,
                  adapted: dict[str, Adapted], key: str = "eval.adapt") -> str:
    """One line saying that a set looks shifted, by how much, and what to do about it."""
    return (f"warning: the {name} set looks shifted from training: estimated pneumonia share "
            f"{shift.estimated_prevalence:.2f} (training {train_prevalence:.2f}), mean predicted "
            f"probability {shift.mean_probability:.2f} (validation {val_mean_probability:.2f}); its "
            f"scores may not carry over: {advice(name, adapted, key)}")


def not_applicable_line(name: str, adapted: dict[str, Adapted]) -> str | None:
    """One line naming the methods that do not apply to a set and why, or None."""
    failed = {m: a.verdict.reason for m, a in adapted.items() if not a.verdict.applies}
    if not failed:
        return None
    reasons = "; ".join(f"{m}: {reason}" for m, reason in failed.items())
    return (f"note: eval.adapt: {', '.join(failed)} not applicable to the {name} set, so not scored "
            f"({reasons})")
