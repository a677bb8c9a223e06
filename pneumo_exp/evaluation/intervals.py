"""How sure one run's test score is: 95% intervals of its test AUC, sensitivity, specificity and
accuracy, by bootstrap over test patients (over images where the source names no patient).

Seed-to-seed spread says nothing about the finite test set: 624 Kermany test images (234 normal)
leave specificity uncertain by about ±0.03 on their own. Images of one patient are not independent,
so patients, not images, are resampled (a cluster bootstrap): each resample draws patients with
replacement and scores all their images. Patients with pneumonia and those without are drawn
separately (a stratified bootstrap, as is usual for AUC), so that every resample has both classes
and the test set's class sizes. scipy.stats.bootstrap draws the resamples (percentile method); the
metrics of every resample are computed at once from per-patient counts, so 2,000 resamples cost
well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
CONFIDENCE = 0.95
METHOD = (f"percentile bootstrap over test patients, stratified by class, {N_RESAMPLES} resamples, "
          f"{CONFIDENCE:.0%}")


def clusters(patients: np.ndarray) -> np.ndarray:
    """The resampling unit of each image, as 0..k-1: its patient, or the image itself where the
    source names none ("")."""
    named = np.asarray(patients, dtype=str)
    own = np.char.add("image ", np.arange(len(named)).astype(str))
    return np.unique(np.where(named == "", own, named), return_inverse=True)[1]


def unit(patients: np.ndarray) -> str:
    """What was resampled, as the run's tag says it."""
    named = np.asarray(patients, dtype=str) != ""
    return "patient" if named.all() else "image" if not named.any() else "patient, else image"


@dataclass(frozen=True)
class Counts:
    """Per-cluster sums from which every resample's metrics follow by weighting the clusters."""
    positives: np.ndarray  # (k,) pneumonia images
    negatives: np.ndarray  # (k,) normal images
    true_positives: np.ndarray
    true_negatives: np.ndarray
    pairs: np.ndarray  # (k, k) [c, d]: positive images of c ranked above negatives of d (ties 1/2)


def counts(labels: np.ndarray, probabilities: np.ndarray, cluster: np.ndarray, threshold: float) -> Counts:
    """The sums of each cluster at the decision `probability >= threshold`."""
    k = int(cluster.max()) + 1 if len(cluster) else 0
    positive, predicted = labels == 1, probabilities >= threshold

    def per_cluster(mask: np.ndarray) -> np.ndarray:
        return np.bincount(cluster[mask], minlength=k).astype(float)

    above = (probabilities[positive, None] > probabilities[None, ~positive]).astype(float)
    above += 0.5 * (probabilities[positive, None] == probabilities[None, ~positive])
    of_positive = np.eye(k)[cluster[positive]]  # (positives, k) one-hot
    of_negative = np.eye(k)[cluster[~positive]]
    return Counts(per_cluster(positive), per_cluster(~positive), per_cluster(positive & predicted),
                  per_cluster(~positive & ~predicted), of_positive.T @ above @ of_negative)


def metrics_of(weights: np.ndarray, c: Counts) -> dict[str, np.ndarray]:
    """AUC, sensitivity, specificity and accuracy of each row of cluster weights (how often a
    resample drew each cluster): the Mann-Whitney AUC over the weighted pairs, the rest ratios."""
    with np.errstate(invalid="ignore", divide="ignore"):
        positives, negatives = weights @ c.positives, weights @ c.negatives
        return {
            "auc": np.einsum("...i,ij,...j->...", weights, c.pairs, weights) / (positives * negatives),
            "recall": weights @ c.true_positives / positives,
            "specificity": weights @ c.true_negatives / negatives,
            "accuracy": weights @ (c.true_positives + c.true_negatives) / (positives + negatives),
        }


TOO_FEW = "not computed: the test split has fewer than 2 patients with, or without, pneumonia"


def of_test_scores(labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray,
                   threshold: float, seed: int) -> dict[str, float]:
    """`test_METRIC_ci_low` / `_ci_high` for auc, recall (sensitivity), specificity and accuracy at
    the run's threshold; the same run and seed give the same intervals. None (an empty dict) where a
    class has fewer than 2 resampling units: no resample could vary there (see `described`)."""
    cluster = clusters(patients)
    c = counts(labels, probabilities, cluster, threshold)
    k = len(c.positives)
    names = list(metrics_of(np.ones(k), c))
    with_pneumonia = c.positives > 0  # the strata: a Kermany patient's images are all of one class

    def statistic(sick: np.ndarray, well: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.concatenate([sick, well], axis=-1)
        rows = drawn.reshape(-1, drawn.shape[-1])
        weights = np.stack([np.bincount(row, minlength=k) for row in rows]).astype(float)
        values = metrics_of(weights, c)
        return np.stack([values[name].reshape(drawn.shape[:-1]) for name in names])

    strata = (np.flatnonzero(with_pneumonia), np.flatnonzero(~with_pneumonia))
    if min(len(stratum) for stratum in strata) < 2:
        return {}
    result = stats.bootstrap(strata, statistic, n_resamples=N_RESAMPLES, vectorized=True,
                             confidence_level=CONFIDENCE, method="percentile",
                             rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return {f"test_{name}_ci_{end}": float(value) for i, name in enumerate(names)
            for end, value in (("low", low[i]), ("high", high[i]))}


def described(patients: np.ndarray, intervals: dict[str, float]) -> str:
    """The run's test_ci tag: how the intervals were made, or why there are none."""
    return f"{METHOD} (unit: {unit(patients)})" if intervals else TOO_FEW
