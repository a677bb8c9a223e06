"""Fitting: one trace of the training step, weight averaging, weight decay, resumed fits, every
imbalance method through fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pneumo_exp import data, models
from pneumo_exp.data import pipeline
from pneumo_exp.models import imbalance
from pneumo_exp.models.train import compile_model, fit, train_members
from tests.helpers import TINY, choices, make_config


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


@pytest.fixture(scope="module")
def plain_fit(tmp_path_factory):
    """fit_tiny without weight averaging or decay, which two tests compare with: fitted once. They
    carry the xdist_group mark "plain_fit", so that one worker runs both."""
    return fit_tiny(0, tmp_path_factory.mktemp("plain_fit"))[0]


@pytest.mark.xdist_group("plain_fit")
def test_weight_averaging_validates_and_keeps_the_averaged_weights(tmp_path, plain_fit):
    raw = plain_fit
    averaged, val, logs = fit_tiny(0.9, tmp_path / "ema")
    best = max(logs, key=lambda epoch_logs: epoch_logs["val_auc"])  # the first best, as kept
    kept = averaged.evaluate(val, verbose=0, return_dict=True)
    # the kept weights are the ones validated at the best epoch, and they are not the raw weights
    assert kept["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert not all(np.allclose(a, b) for a, b in zip(raw.get_weights(), averaged.get_weights(), strict=True))


@pytest.mark.slow
@pytest.mark.long
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


@pytest.mark.xdist_group("plain_fit")
def test_weight_decay_shrinks_the_weights(tmp_path, plain_fit):
    def kernel_norm(model):
        return np.sqrt(sum(np.sum(w ** 2) for w in model.get_weights() if w.ndim == 4))

    plain = plain_fit
    decayed, _, _ = fit_tiny(0, tmp_path / "decayed", "train.weight_decay=5")  # x lr 0.01: 5% a step
    assert kernel_norm(decayed) < 0.8 * kernel_norm(plain)


@pytest.mark.parametrize("method", choices("imbalance"))
def test_every_imbalance_method_trains_through_the_real_pipeline(method, npz_overrides, tmp_path):
    """train_members as a run calls it, without MLflow: its loss, class weights or balanced batches
    reach Keras' fit, and each epoch's logs arrive once, finite."""
    cfg = make_config([*npz_overrides, *TINY, f"imbalance={method}"])
    dataset = data.load(cfg.data)
    plan = imbalance.plan(cfg.imbalance, dataset.train.labels)
    logged, done = [], []

    def batches(seed):
        return pipeline.batches(dataset.train, 8, 3, shuffle=True, sampling=plan.sampling, seed=seed)

    steps = imbalance.steps_per_epoch(plan, dataset.train.labels, 8)
    members = train_members(cfg, plan, batches, pipeline.batches(dataset.val, 8, 3), steps,
                            tmp_path / "backup", lambda epoch, logs: logged.append((epoch, dict(logs))),
                            done.append)
    assert len(members) == 1 and done == [""]
    assert [epoch for epoch, _ in logged] == [0]
    assert {"loss", "val_auc", "epoch_seconds"} <= set(logged[0][1])
    assert 0 < logged[0][1]["train_seconds"] < logged[0][1]["epoch_seconds"]  # validation excluded
    assert all(np.isfinite(value) for value in logged[0][1].values())


def test_the_training_step_is_traced_once():
    """compile_model makes the optimizer's variables, so the first step is not traced twice."""
    cfg = make_config([*TINY, "model=resnet_small"])
    model = models.build(cfg.model, cfg.regularization, (16, 16, 1))
    labels = np.tile([0.0, 1.0], 8)
    compile_model(model, imbalance.plan(cfg.imbalance, labels), 0.01)
    traced = []
    step = model.train_step

    def counted_step(batch):  # runs once per trace of the step, not per batch
        traced.append(batch)
        return step(batch)

    model.train_step = counted_step
    pixels = np.random.default_rng(0).normal(90, 20, (16, 16, 16, 1)).astype("float32")
    model.fit(tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(8), epochs=1, verbose=0)
    assert len(traced) == 1
