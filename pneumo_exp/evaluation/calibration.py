"""Calibrated probabilities and label shift, in plain NumPy: Platt scaling fitted on validation, Bayes'
rule to move posteriors from one share of pneumonia to another, and Saerens, Latinne & Decaestecker's
(2002) EM estimate of a set's share from its calibrated posteriors. eval.adapt=prior, the threshold
rules that calibrate (train.threshold), the applicability check and a site's labelled sample use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

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

    def threshold_at(self, calibrated: float) -> float:
        """The probability whose calibrated value is `calibrated`: cutting there cuts the calibrated
        probabilities at `calibrated`."""
        log_odds = (np.log(calibrated / (1 - calibrated)) - self.intercept) / self.slope
        return float(1 / (1 + np.exp(-log_odds)))


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
