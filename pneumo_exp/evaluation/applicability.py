"""Does a label-free adaptation apply to a set? Each method assumes that, once it is applied, the
set differs from validation in its share of pneumonia at most: its scores must then be a mixture of
validation's class-conditional scores (the same method applied to validation), in proportions that
EM estimates. That is checked here from the set's scores and validation's alone, never the set's
labels, by a goodness-of-fit test:

- statistic: Pearson's chi-square between the set's counts in BINS of calibrated probability and
  the counts the mixture `share * pneumonia + (1 - share) * normal` of validation's predicts, at
  EM's share. The bins split the middle finely: that is where decisions are made, and where a
  validation split that saturates has few images, so a shifted set's excess there weighs heavily
  (a Kolmogorov-Smirnov distance, led by the crowded ends, passed sets where a method then lowered
  accuracy: benchmarks/README.md, site_shift.py);
- p-value: a parametric bootstrap that redoes every estimate (Efron & Tibshirani 1993, ch. 16): sets
  of the same size drawn from that mixture, validation's classes resampled, the share re-estimated,
  so that both the set's and validation's finite sizes are accounted for.

A set whose fit is rejected at `alpha` (a covariate shift: its normals scored where validation's
normals never are, say) gets the method's scores withheld, not offered as scores to trust. A set
smaller than `min_images` is never adapted: a handful of images cannot estimate the statistics an
adaptation changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo_exp.evaluation.calibration import Calibration, estimate_prevalence

BOOTSTRAP_DRAWS = 200


@dataclass(frozen=True)
class Verdict:
    """Whether a method's assumption holds on a set, and the numbers that say so."""
    applies: bool
    statistic: float  # chi-square of the set's scores against the fitted mixture (nan: too few images)
    p_value: float
    share: float  # the mixture's share of pneumonia (EM)
    reason: str  # why it does not apply ("" where it does)


BINS = np.array([0, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98, 1])  # of the calibrated probability
PSEUDO_COUNT = 0.5  # per bin of each validation class: a bin it left empty is improbable, not impossible


def binned(values: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Counts of `values` in BINS of their calibrated probability."""
    return np.histogram(np.clip(calibration(values), 0, 1), BINS)[0]


def chi_square(scores: np.ndarray, normal: np.ndarray, pneumonia: np.ndarray, share: float,
               calibration: Calibration) -> float:
    """Pearson's chi-square of the set's binned `scores` against the mixture of validation's
    `normal` and `pneumonia` scores at `share`."""
    def shares(values: np.ndarray) -> np.ndarray:
        return (binned(values, calibration) + PSEUDO_COUNT) / (len(values) + PSEUDO_COUNT * (len(BINS) - 1))

    expected = len(scores) * (share * shares(pneumonia) + (1 - share) * shares(normal))
    return float(np.sum((binned(scores, calibration) - expected) ** 2 / expected))


def fitted_share(scores: np.ndarray, calibration: Calibration) -> float:
    """EM's share of pneumonia in a set, from its calibrated scores (adapt.estimate_prevalence)."""
    return estimate_prevalence(calibration(scores), calibration.prior)


def mixture_fit(scores: np.ndarray, val_scores: np.ndarray, val_labels: np.ndarray, calibration: Calibration,
                draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """(chi-square, bootstrap p-value, share) of the set's `scores` as a mixture of validation's
    class-conditional `val_scores`."""
    normal, pneumonia = val_scores[val_labels == 0], val_scores[val_labels == 1]
    share = fitted_share(scores, calibration)
    statistic = chi_square(scores, normal, pneumonia, share, calibration)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(draws):
        n_pneumonia = rng.binomial(len(scores), share)
        drawn = np.concatenate([rng.choice(pneumonia, n_pneumonia),
                                rng.choice(normal, len(scores) - n_pneumonia)])
        normal_b, pneumonia_b = rng.choice(normal, len(normal)), rng.choice(pneumonia, len(pneumonia))
        share_b = fitted_share(drawn, calibration)
        exceed += chi_square(drawn, normal_b, pneumonia_b, share_b, calibration) >= statistic
    return statistic, (exceed + 1) / (draws + 1), share


def check(scores: np.ndarray, val_scores: np.ndarray, val_labels: np.ndarray, calibration: Calibration,
          alpha: float, min_images: int, seed: int = 0) -> Verdict:
    """The verdict on one set for one method: `scores` and `val_scores` are the set's and
    validation's probabilities with the method applied to each, `calibration` fitted on the latter."""
    if len(scores) < min_images:
        return Verdict(False, float("nan"), float("nan"), float("nan"),
                       f"{len(scores)} images, fewer than eval.min_images={min_images}")
    if len(np.unique(val_labels)) < 2:
        return Verdict(False, float("nan"), float("nan"), float("nan"), "validation has one class only")
    statistic, p_value, share = mixture_fit(scores, val_scores, val_labels, calibration, seed=seed)
    if p_value < alpha:
        return Verdict(False, statistic, p_value, share,
                       f"its scores are not a mixture of validation's classes (chi-square {statistic:.1f}, "
                       f"p={p_value:.3f} < {alpha})")
    return Verdict(True, statistic, p_value, share, "")
