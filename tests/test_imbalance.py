import numpy as np
import pytest

from pneumo_exp.imbalance import plan
from tests.helpers import make_config

LABELS = np.array([0] * 25 + [1] * 75)


def test_class_weight_equals_the_notebook_formula():
    weights = plan(make_config(["imbalance=class_weight"]).imbalance, LABELS).class_weight
    assert weights[0] == pytest.approx(100 / (2 * 25))
    assert weights[1] == pytest.approx(100 / (2 * 75))


def test_focal_loss_equals_an_independent_reference():
    cfg = make_config(["imbalance=focal", "imbalance.alpha=0.3", "imbalance.gamma=1.5"])
    y = np.array([1, 1, 0, 0, 1], dtype="float32")
    p = np.array([0.9, 0.2, 0.1, 0.7, 0.5], dtype="float32")
    p_true = np.where(y == 1, p, 1 - p)
    alpha_true = np.where(y == 1, 0.3, 0.7)
    reference = np.mean(-alpha_true * (1 - p_true) ** 1.5 * np.log(p_true))
    loss = plan(cfg.imbalance, LABELS).loss(y[:, None], p[:, None])
    assert float(loss) == pytest.approx(reference, rel=1e-4)
    cross_entropy = plan(make_config([]).imbalance, LABELS).loss(y[:, None], p[:, None])
    assert float(cross_entropy) > 2 * float(loss)  # focal down-weights: it is a different loss


def test_oversample_rebalances_batches_and_none_changes_nothing():
    assert plan(make_config(["imbalance=oversample"]).imbalance, LABELS).balanced_batches
    plain = plan(make_config([]).imbalance, LABELS)
    assert plain.class_weight is None and not plain.balanced_batches
