"""Does a label-free adaptation apply to a set? Each method assumes that, once it is applied, the
set differs from validation in its share of pneumonia at most: its scores must then be a mixture of
validation's class-conditional scores (the same method applied to validation), in proportions that
EM estimates. That is checked here from the set's scores and validation's alone, never the set's
labels, by a goodness-of-fit test:

- statistic: the Kolmogorov-Smirnov distance between the set's empirical score distribution and
  the mixture `share * F_pneumonia + (1 - share) * F_normal` of validation's, at EM's share;
- p-value: a parametric bootstrap that redoes every estimate (Efron & Tibshirani 1993, ch. 16): sets
  of the same size drawn from that mixture, validation's classes resampled, the share re-estimated,
  so that both the set's and validation's finite sizes are accounted for.

A set whose fit is rejected at `alpha` (a covariate shift: its normals scored where validation's
normals never are, say) gets the method's scores withheld, not offered as scores to trust. A set
smaller than `min_images` is never adapted: a handful of images cannot estimate the statistics an
adaptation changes. The test is on ranks only, so any monotone calibration leaves it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo_exp.calibration import Calibration, estimate_prevalence

BOOTSTRAP_DRAWS = 200


@dataclass(frozen=True)
class Verdict:
    """Whether a method's assumption holds on a set, and the numbers that say so."""
    applies: bool
    distance: float  # KS distance of the set's scores from the fitted mixture (nan: too few images)
    p_value: float
    share: float  # the mixture's share of pneumonia (EM)
    reason: str  # why it does not apply ("" where it does)


def mixture_distance(scores: np.ndarray, normal: np.ndarray, pneumonia: np.ndarray, share: float) -> float:
    """sup_x |F_set(x) - (share F_pneumonia(x) + (1 - share) F_normal(x))| over every observed x."""
    grid = np.unique(np.concatenate([scores, normal, pneumonia]))

    def cdf(values: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.sort(values), grid, side="right") / len(values)

    mixture = share * cdf(pneumonia) + (1 - share) * cdf(normal)
    return float(np.max(np.abs(cdf(scores) - mixture)))


def fitted_share(scores: np.ndarray, calibration: Calibration) -> float:
    """EM's share of pneumonia in a set, from its calibrated scores (adapt.estimate_prevalence)."""
    return estimate_prevalence(calibration(scores), calibration.prior)


def mixture_fit(scores: np.ndarray, val_scores: np.ndarray, val_labels: np.ndarray, calibration: Calibration,
                draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """(KS distance, bootstrap p-value, share) of the set's `scores` as a mixture of validation's
    class-conditional `val_scores`."""
    normal, pneumonia = val_scores[val_labels == 0], val_scores[val_labels == 1]
    share = fitted_share(scores, calibration)
    distance = mixture_distance(scores, normal, pneumonia, share)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(draws):
        n_pneumonia = rng.binomial(len(scores), share)
        drawn = np.concatenate([rng.choice(pneumonia, n_pneumonia),
                                rng.choice(normal, len(scores) - n_pneumonia)])
        normal_b, pneumonia_b = rng.choice(normal, len(normal)), rng.choice(pneumonia, len(pneumonia))
        share_b = fitted_share(drawn, calibration)
        exceed += mixture_distance(drawn, normal_b, pneumonia_b, share_b) >= distance
    return distance, (exceed + 1) / (draws + 1), share


def check(scores: np.ndarray, val_scores: np.ndarray, val_labels: np.ndarray, calibration: Calibration,
          alpha: float, min_images: int, seed: int = 0) -> Verdict:
    """The verdict on one set for one method: `scores` and `val_scores` are the set's and
    validation's probabilities with the method applied to each, `calibration` fitted on the latter."""
    if len(scores) < min_images:
        return Verdict(False, float("nan"), float("nan"), float("nan"),
                       f"{len(scores)} images, fewer than eval.min_images={min_images}")
    if len(np.unique(val_labels)) < 2:
        return Verdict(False, float("nan"), float("nan"), float("nan"), "validation has one class only")
    distance, p_value, share = mixture_fit(scores, val_scores, val_labels, calibration, seed=seed)
    if p_value < alpha:
        return Verdict(False, distance, p_value, share,
                       f"its scores are not a mixture of validation's classes (KS D={distance:.3f}, "
                       f"p={p_value:.3f} < {alpha})")
    return Verdict(True, distance, p_value, share, "")
