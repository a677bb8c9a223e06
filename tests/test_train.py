"""The operating point and the metrics: threshold chosen on validation, test scored at it and at 0.5."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, make_config
from sklearn.metrics import brier_score_loss

from pneumo_exp import imbalance, models
from pneumo_exp.train import assess, choose_threshold, compile_model, fit

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.3, 0.55, 0.7, 0.4, 0.6, 0.8, 0.85, 0.9, 0.95])


def test_youden_threshold_maximizes_sensitivity_plus_specificity():
    threshold = choose_threshold(LABELS, PROBS, "youden", 0.95)
    predicted = threshold <= PROBS
    j = predicted[LABELS == 1].mean() + (~predicted[LABELS == 0]).mean() - 1
    for t in np.unique(PROBS):
        p = t <= PROBS
        assert p[LABELS == 1].mean() + (~p[LABELS == 0]).mean() - 1 <= j + 1e-12
    assert threshold == pytest.approx(0.8)  # sensitivity 4/6, specificity 4/4: J = 2/3


def test_sensitivity_threshold_is_the_highest_that_reaches_the_target():
    threshold = choose_threshold(LABELS, PROBS, "sensitivity", 1.0)
    assert threshold == pytest.approx(0.4)  # the lowest-scored pneumonia image must be caught
    assert (PROBS[LABELS == 1] >= threshold).all()
    assert choose_threshold(LABELS, PROBS, "sensitivity", 0.8) == pytest.approx(0.6)
    assert choose_threshold(LABELS, PROBS, 0.3, 0.95) == 0.3  # a number is taken as it is
    # inside a vertical run of the ROC curve (no false positive above 0.3): still the highest
    labels, probs = np.array([0, 0, 1, 1, 1, 1]), np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.3])
    assert choose_threshold(labels, probs, "sensitivity", 0.5) == pytest.approx(0.8)


def test_assess_reports_test_at_the_chosen_threshold_and_at_one_half():
    cfg = make_config(["train.threshold=sensitivity", "train.target_sensitivity=1.0"])
    plan = imbalance.plan(cfg.imbalance, LABELS)
    test_probs = np.array([0.2, 0.45, 0.5, 0.9, 0.42, 0.48, 0.7, 0.99, 0.3, 0.6])
    threshold, metrics = assess({"val": LABELS, "test": LABELS}, {"val": PROBS, "test": test_probs},
                                plan, cfg.train)
    assert metrics["threshold"] == threshold == pytest.approx(0.4)
    assert metrics["final_val_recall"] == 1.0
    assert metrics["test_recall"] == pytest.approx(5 / 6)  # 0.3 < 0.4: one missed
    assert metrics["test_recall_at_0.5"] == pytest.approx(3 / 6)
    assert metrics["test_specificity"] == pytest.approx(1 / 4)
    assert metrics["test_specificity_at_0.5"] == pytest.approx(2 / 4)
    assert metrics["test_brier"] == pytest.approx(brier_score_loss(LABELS, test_probs))
    assert "test_auc_at_0.5" not in metrics  # threshold-free metrics have no 0.5 twin


def fit_tiny(ema_momentum, backup, *overrides, interrupt_after=0):
    """A tiny resnet fitted 3 epochs on blob images, as run.py fits it, interrupted as by Ctrl-C
    after epoch `interrupt_after` if > 0: (model, validation split, epoch logs)."""
    cfg = make_config([*TINY, "model=resnet_small", "train.epochs=3", "train.early_stopping_patience=3",
                       f"train.ema_momentum={ema_momentum}", *overrides])
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 32)
    images = rng.normal(90, 20, (64, 16, 16, 1)).astype("float32")
    images[labels == 1, 4:8, 4:8] += 60 * rng.uniform(0, 1, ((labels == 1).sum(), 1, 1, 1))
    split = tf.data.Dataset.from_tensor_slices((images, labels.astype("float32")))
    keras.utils.set_random_seed(0)
    model = models.build(cfg.model, cfg.regularization, (16, 16, 1))
    plan = imbalance.plan(cfg.imbalance, labels)
    compile_model(model, plan, 0.01, ema_momentum=cfg.train.ema_momentum,
                  weight_decay=cfg.train.weight_decay)
    logs = []

    def log(epoch, epoch_logs):
        logs.append(dict(epoch_logs))
        if epoch + 1 == interrupt_after:
            raise KeyboardInterrupt

    fit(model, split.take(48).batch(8), split.skip(48).batch(8), cfg.train, plan, None, log, backup)
    return model, split.skip(48).batch(8), logs


def test_weight_averaging_validates_and_keeps_the_averaged_weights(tmp_path):
    raw, _, _ = fit_tiny(0, tmp_path / "raw")
    averaged, val, logs = fit_tiny(0.9, tmp_path / "ema")
    best = max(logs, key=lambda epoch_logs: epoch_logs["val_auc"])  # the first best, as kept
    kept = averaged.evaluate(val, verbose=0, return_dict=True)
    # the kept weights are the ones validated at the best epoch, and they are not the raw weights
    assert kept["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert not all(np.allclose(a, b) for a, b in zip(raw.get_weights(), averaged.get_weights(), strict=True))


def test_a_fit_with_weight_averaging_interrupted_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    # no dropout and no early stopping: each fit is deterministic and ends on the averaged weights
    overrides = ("regularization=bn_only", "train.early_stopping_patience=0")
    whole, _, _ = fit_tiny(0.9, tmp_path / "whole", *overrides)
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(0.9, tmp_path / "cut", *overrides, interrupt_after=2)
    resumed, _, logs = fit_tiny(0.9, tmp_path / "cut", *overrides)
    assert len(logs) == 1  # the backup held epochs 1-2: only epoch 3 trained again
    for expected, actual in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_weight_decay_shrinks_the_weights(tmp_path):
    def kernel_norm(model):
        return np.sqrt(sum(np.sum(w ** 2) for w in model.get_weights() if w.ndim == 4))

    plain, _, _ = fit_tiny(0, tmp_path / "plain")
    decayed, _, _ = fit_tiny(0, tmp_path / "decayed", "train.weight_decay=5")  # x lr 0.01: 5% a step
    assert kernel_norm(decayed) < 0.8 * kernel_norm(plain)
