import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pneumo_exp.report import paired


def psi(x: float, y: float) -> float:
    """The Mann-Whitney kernel: a positive scored x against a negative scored y."""
    return 1.0 if x > y else 0.5 if x == y else 0.0


def brute_force_delong(labels, p_a, p_b):
    """DeLong et al. (1988) in its textbook O(m n) form, every positive against every negative."""
    labels = np.asarray(labels)
    v10, v01 = [], []
    for scores in (np.asarray(p_a), np.asarray(p_b)):
        x, y = scores[labels == 1], scores[labels == 0]
        kernel = np.array([[psi(xi, yj) for yj in y] for xi in x])
        v10.append(kernel.mean(axis=1))
        v01.append(kernel.mean(axis=0))
    m, n = len(v10[0]), len(v01[0])
    s = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
    aucs = [v.mean() for v in v10]
    z = (aucs[0] - aucs[1]) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return aucs, np.array(v10), np.array(v01), z, 2 * stats.norm.sf(abs(z))


def two_models(n: int = 60, seed: int = 0, ties: bool = True):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=n) < 0.4).astype(int)
    p_a = 1 / (1 + np.exp(-(1.5 * labels + rng.normal(size=n))))
    p_b = 1 / (1 + np.exp(-(0.8 * labels + 0.5 * (p_a - 0.5) + rng.normal(size=n))))  # correlated with a
    if ties:  # rounded scores tie within and across the classes: the midranks must count them half
        p_a, p_b = np.round(p_a, 1), np.round(p_b, 1)
    return labels, p_a, p_b


@pytest.mark.parametrize("ties", [True, False])
def test_delong_aucs_equal_sklearn_and_its_variance_equals_the_brute_force_one(ties):
    labels, p_a, p_b = two_models(ties=ties)
    auc_a, auc_b, z, p = paired.delong(labels, p_a, p_b)
    assert (auc_a, auc_b) == pytest.approx((roc_auc_score(labels, p_a), roc_auc_score(labels, p_b)))
    aucs, v10, v01, brute_z, brute_p = brute_force_delong(labels, p_a, p_b)
    assert (auc_a, auc_b) == pytest.approx(aucs)
    _, fast_v10, fast_v01 = paired.structural_components(labels, np.vstack([p_a, p_b]))
    assert fast_v10 == pytest.approx(v10) and fast_v01 == pytest.approx(v01)
    # one model's AUC variance, S10/m + S01/n, from the brute-force components
    variance = np.var(v10[0], ddof=1) / v10.shape[1] + np.var(v01[0], ddof=1) / v01.shape[1]
    fast_variance = np.var(fast_v10[0], ddof=1) / v10.shape[1] + np.var(fast_v01[0], ddof=1) / v01.shape[1]
    assert fast_variance == pytest.approx(variance)
    assert (z, p) == pytest.approx((brute_z, brute_p))
    assert 0 < p < 1 and z != 0


def test_delong_is_symmetric_and_identical_predictions_give_p_1():
    labels, p_a, p_b = two_models(seed=1)
    auc_a, auc_b, z, p = paired.delong(labels, p_a, p_b)
    swapped = paired.delong(labels, p_b, p_a)
    assert swapped == pytest.approx((auc_b, auc_a, -z, p))
    assert paired.delong(labels, p_a, p_a) == (auc_a, auc_a, 0.0, 1.0)  # variance 0: no 0/0


def test_delong_finds_a_strongly_better_model():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 100)
    good, random = labels + rng.normal(0, 0.5, 200), rng.uniform(size=200)
    auc_a, auc_b, z, p = paired.delong(labels, good, random)
    assert auc_a > 0.9 and abs(auc_b - 0.5) < 0.1 and z > 5 and p < 1e-6


def test_delong_refuses_labels_it_cannot_test():
    with pytest.raises(ValueError, match="2 positive and 2 negative"):
        paired.delong([0, 0, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="0 or 1"):
        paired.delong([0, 2, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.1, 0.4])


def test_mcnemar_exact_matches_the_binomial_by_hand():
    assert paired.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)  # 2 (C(10,0) + C(10,1)) / 2^10
    assert paired.mcnemar_exact(1, 9) == pytest.approx(0.021484375)
    assert paired.mcnemar_exact(9, 1) == paired.mcnemar_exact(1, 9)
    assert paired.mcnemar_exact(0, 0) == 1.0 and paired.mcnemar_exact(5, 5) == 1.0


def test_mcnemar_counts_the_discordant_images():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    a = np.array([1, 1, 0, 0, 0, 1, 1, 0])  # right on 0, 1, 3, 4, 6, 7
    b = np.array([1, 0, 1, 0, 1, 1, 0, 0])  # right on 0, 2, 3, 7
    assert paired.mcnemar(labels, a, b) == (3, 1, paired.mcnemar_exact(3, 1))  # a alone: 1, 4, 6; b: 2
    assert paired.mcnemar(labels, b, a) == (1, 3, paired.mcnemar_exact(3, 1))
    assert paired.mcnemar(labels, a, a) == (0, 0, 1.0)


def test_the_corrected_resampled_t_test_against_a_hand_computed_case():
    """Differences 0.01, 0.03, 0.02, 0.04, 0.00 over 5 folds: mean 0.02, s² = 0.001 / 4 = 0.00025,
    variance of the mean (1/5 + 1/4) s² = 1.125e-4, t = 0.02 / 0.010607 = 1.8856 on 4 degrees of
    freedom: p = 0.1324, where the plain paired t-test (variance s²/5) gives 0.0474."""
    diff = np.array([0.01, 0.03, 0.02, 0.04, 0.00])
    assert paired.corrected_resampled_t(diff, 1 / 4) == pytest.approx(0.1324189, abs=1e-6)
    assert paired.corrected_resampled_t(diff, 0.0) == pytest.approx(0.0474207, abs=1e-6)
    assert np.isnan(paired.corrected_resampled_t(np.full(5, 0.02), 1 / 4))


def test_one_aucs_delong_interval_holds_it_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        labels = np.arange(n) % 2
        auc, low, high = paired.auc_interval(labels, rng.normal(labels, 1.0))
        assert low < auc < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3
