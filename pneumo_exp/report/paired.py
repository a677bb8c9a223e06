"""Paired tests of two models on the same test images, DeLong's test of their AUCs and McNemar's of
their decisions, and Holm's adjustment of a family of p-values.

The report's seed-level t-test asks whether a cell beats the baseline across training seeds; these
ask, for one pair of runs, whether the difference on these test images exceeds what the sampling of
the images would give. Both use that the two models scored the same images, which makes their
errors correlated and the paired test much more powerful than comparing two independent intervals.
scipy and statsmodels ship no DeLong test, so it is written here (a few lines, tested against the
textbook O(m n) form in tests/test_paired.py).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _positives(labels: np.ndarray | list[int]) -> np.ndarray:
    """The labels as a boolean mask of positives, refusing anything but 0/1 and a class with fewer
    than 2 images (the structural components' covariance needs 2 of each)."""
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    positive = labels == 1
    if min(positive.sum(), (~positive).sum()) < 2:
        raise ValueError("DeLong's test needs at least 2 positive and 2 negative images")
    return positive


def structural_components(labels: np.ndarray | list[int], scores: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC, V10 and V01 of each row of `scores` (models x images) by Sun & Xu's (2014) midranks.

    V10[i] is the share of negatives positive i outranks (ties count half), V01[j] the share of
    positives that outrank negative j; both average to the AUC. Midranks give them in O(N log N)
    instead of comparing every positive with every negative: a positive's rank among all images
    minus its rank among the positives counts the negatives below it."""
    positive = _positives(labels)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    x, y = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    tz = stats.rankdata(np.concatenate([x, y], axis=1), axis=1)  # midranks: ties share the mean rank
    tx, ty = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    return auc, (tz[:, :m] - tx) / n, 1.0 - (tz[:, m:] - ty) / m


def delong(labels: np.ndarray | list[int], p_a: np.ndarray, p_b: np.ndarray
           ) -> tuple[float, float, float, float]:
    """DeLong, DeLong & Clarke-Pearson's (1988) test that two correlated AUCs are equal: returns
    (auc_a, auc_b, z, two-sided p). The AUCs' covariance is S10/m + S01/n, the covariances of the
    structural components over the m positives and n negatives. Identical scores have variance 0
    and equal AUCs: z = 0, p = 1 rather than 0/0."""
    auc, v10, v01 = structural_components(labels, np.vstack([p_a, p_b]))
    s = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    variance = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    diff = float(auc[0] - auc[1])
    z = diff / math.sqrt(variance) if variance > 0 else 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return float(auc[0]), float(auc[1]), z, float(2 * stats.norm.sf(abs(z)))


def auc_interval(labels: np.ndarray | list[int], scores: np.ndarray) -> tuple[float, float, float]:
    """One AUC and its 95% interval from DeLong's variance (S10/m + S01/n), clipped to [0, 1]."""
    auc, v10, v01 = structural_components(labels, scores)
    variance = float(np.var(v10, ddof=1) / v10.shape[1] + np.var(v01, ddof=1) / v01.shape[1])
    half = float(stats.norm.ppf(0.975)) * math.sqrt(variance)
    return float(auc[0]), max(0.0, float(auc[0]) - half), min(1.0, float(auc[0]) + half)


def corrected_resampled_t(diff: np.ndarray, ratio: float) -> float:
    """Two-sided p of Nadeau & Bengio's (2003) corrected resampled t-test over J paired results of
    cross-validation (Bouckaert & Frank 2004 for r repeats of K folds): the folds' training sets
    overlap, so their results are correlated and the plain paired t-test, whose variance of the mean
    is s^2/J, is far too confident; the correction inflates it to (1/J + ratio) s^2, ratio = the
    validation size over the training size (1/(K-1) for K folds), with J - 1 degrees of freedom.
    NaN with fewer than 2 results or where the difference is the same in every one."""
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2 or np.ptp(diff) < 1e-9:
        return math.nan
    t = float(np.mean(diff)) / math.sqrt((1 / len(diff) + ratio) * float(np.var(diff, ddof=1)))
    return float(2 * stats.t.sf(abs(t), len(diff) - 1))


def mcnemar_exact(b: int, c: int) -> float:
    """The exact McNemar p: under no difference each of the b + c discordant images is equally likely
    to favour either model, so b ~ Binomial(b + c, 1/2). No discordant image: p = 1."""
    return 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)


def mcnemar(labels: np.ndarray | list[int], decisions_a: np.ndarray, decisions_b: np.ndarray
            ) -> tuple[int, int, float]:
    """McNemar's (1947) test of two models' decisions on the same images: (b, c, exact p), with b the
    images only model a gets right and c those only model b gets right (the concordant ones say
    nothing about which is better)."""
    labels = np.asarray(labels).astype(bool)
    right_a = np.asarray(decisions_a).astype(bool) == labels
    right_b = np.asarray(decisions_b).astype(bool) == labels
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return b, c, mcnemar_exact(b, c)


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's (1979) step-down adjustment, so that a 4x4 ablation's 15 comparisons with the baseline
    keep the chance of any false positive at the nominal level (scipy has only BH/BY, which bound the
    false discovery rate instead). The j-th smallest of m p-values becomes the running maximum of
    min(1, (m - j + 1) p); NaN p-values stay NaN and are not counted in m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def p_number(p: float) -> str:
    """A p-value to 3 decimals, or in scientific notation below 0.001: thousands of test images make
    such p common on the image-level tests, and 0.000 would hide how small."""
    if p == 0:  # below the smallest float the normal tail gives: DeLong on hundreds of images
        return "<1e-300"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
