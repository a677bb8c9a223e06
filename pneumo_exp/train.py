"""Fit on train, choose on validation, score the test split once."""

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig
from sklearn import metrics as skm

from pneumo_exp.imbalance import Plan


def configure(cfg: DictConfig) -> None:
    """Thread counts and precision, before the first op runs (later jobs of an in-process multirun
    find TensorFlow started: its thread counts can then no longer change)."""
    threading = tf.config.threading
    for wanted, get, set_ in (
            (cfg.intra_op_threads, threading.get_intra_op_parallelism_threads,
             threading.set_intra_op_parallelism_threads),
            (cfg.inter_op_threads, threading.get_inter_op_parallelism_threads,
             threading.set_inter_op_parallelism_threads)):
        if wanted and get() != wanted:
            with contextlib.suppress(RuntimeError):  # TensorFlow already running: its counts stay
                set_(wanted)
    keras.mixed_precision.set_global_policy("mixed_float16" if cfg.mixed_precision else "float32")


class EpochTimer(keras.callbacks.Callback):
    """Adds epoch_seconds (training and validation wall time) to each epoch's logs."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs["epoch_seconds"] = time.perf_counter() - self.started


def compile_model(model: keras.Model, plan: Plan, learning_rate: float, jit_compile: bool = False,
                  decay_steps: int = 0, ema_momentum: float = 0, weight_decay: float = 0) -> None:
    """Adam (its learning rate cosine-decayed to 0 over `decay_steps` if > 0; keeping an exponential
    moving average of the weights if `ema_momentum` > 0; with decoupled weight decay, as AdamW, if
    `weight_decay` > 0), the imbalance plan's loss, and the notebook's per-epoch metrics."""
    if decay_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    model.compile(
        jit_compile=jit_compile,
        optimizer=keras.optimizers.Adam(learning_rate, use_ema=ema_momentum > 0,
                                        ema_momentum=ema_momentum, weight_decay=weight_decay or None),
        loss=plan.loss,
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.AUC(name="auc"),
        ],
    )


def fit(model: keras.Model, train: tf.data.Dataset, val: tf.data.Dataset, cfg: DictConfig,
        plan: Plan, steps_per_epoch: int | None,
        on_epoch_end: Callable[[int, dict[str, float]], None], backup: Path) -> None:
    """Train; with early stopping, stop when val_auc stalls and keep the best epoch's weights (with
    `cfg.ema_momentum`, the weights' moving average is what is validated, kept and returned).

    The training state is saved to `backup` after every epoch (deleted when training ends), so an
    interrupted fit given the same folder continues after its last completed epoch.
    on_epoch_end(epoch, logs) is called once per epoch (never per batch) so logging stays cheap.
    """
    callbacks = [  # the backup first: an interrupt in a later callback finds the epoch saved
        keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True),
        EpochTimer(),
        keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end),
    ]
    if cfg.ema_momentum:  # after the backup (it saves the raw weights), before early stopping: at
        # each epoch's end validation has scored, and early stopping keeps, the averaged weights
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=cfg.early_stopping_patience,
            restore_best_weights=True))
    model.fit(train, validation_data=val, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
              class_weight=plan.class_weight, shuffle=False, callbacks=callbacks,
              verbose=2)  # tf.data shuffles


def thresholded_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float
                        ) -> dict[str, float]:
    """Metrics of the decisions `probability >= threshold` (pneumonia = positive class)."""
    predicted = (probabilities >= threshold).astype(int)
    return {
        "accuracy": skm.accuracy_score(labels, predicted),
        "precision": skm.precision_score(labels, predicted, zero_division=0),
        "recall": skm.recall_score(labels, predicted, zero_division=0),
        "specificity": skm.recall_score(labels, predicted, pos_label=0, zero_division=0),
        "f1": skm.f1_score(labels, predicted, zero_division=0),
    }


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray,
                   threshold: float = 0.5) -> dict[str, float]:
    """Threshold-free metrics (auc, pr_auc, brier: calibration) and those at `threshold`."""
    both_classes = len(np.unique(labels)) == 2
    return thresholded_metrics(labels, probabilities, threshold) | {
        "auc": skm.roc_auc_score(labels, probabilities) if both_classes else float("nan"),
        "pr_auc": skm.average_precision_score(labels, probabilities) if both_classes
        else float("nan"),
        "brier": skm.brier_score_loss(labels, probabilities),
    }


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, method: str | float,
                     target_sensitivity: float) -> float:
    """The operating point, chosen on validation: `youden` maximizes sensitivity + specificity - 1;
    `sensitivity` is the highest threshold whose sensitivity reaches `target_sensitivity`; a number
    is used as it is."""
    if not isinstance(method, str):
        return float(method)
    # every threshold: the default drops those inside a vertical run of the curve, where the
    # highest one reaching the target sensitivity can lie (Youden's corner is kept either way)
    fpr, tpr, thresholds = skm.roc_curve(labels, probabilities, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is inf: no image positive
    if method == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    return float(thresholds[np.flatnonzero(tpr >= target_sensitivity)[0]])


def predict(model: keras.Model, split: tf.data.Dataset) -> np.ndarray:
    """One probability of pneumonia per image of `split`, in its order."""
    return model.predict(split, verbose=0).reshape(-1)


def assess(labels: dict[str, np.ndarray], probabilities: dict[str, np.ndarray], plan: Plan,
           cfg: DictConfig) -> tuple[float, dict[str, float]]:
    """Choose the threshold on validation, then score validation (`final_val_*`) and test once
    (`test_*` at the chosen threshold, `test_*_at_0.5` at 0.5). Returns (threshold, metrics)."""
    threshold = choose_threshold(labels["val"], probabilities["val"], cfg.threshold,
                                 cfg.target_sensitivity)
    metrics = {"threshold": threshold}
    for split, prefix in (("val", "final_val_"), ("test", "test_")):
        y, p = labels[split], probabilities[split]
        scores = binary_metrics(y, p, threshold)
        scores["loss"] = plan.loss(y.astype("float32")[:, None], p[:, None])
        metrics |= {f"{prefix}{k}": float(v) for k, v in scores.items()}
    at_half = thresholded_metrics(labels["test"], probabilities["test"], 0.5)
    return threshold, metrics | {f"test_{k}_at_0.5": float(v) for k, v in at_half.items()}
