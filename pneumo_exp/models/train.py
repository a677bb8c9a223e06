"""Training: the networks of a run (one, or the members of a deep ensemble) fitted on the training
split, validated each epoch for early stopping, backed up each epoch so an interrupted run resumes."""

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from pneumo_exp import models
from pneumo_exp.models.imbalance import Plan


@dataclass(frozen=True)
class Trained:
    model: keras.Model  # what is scored and logged: the members' mean, with TTA if asked
    plan: Plan
    epochs_trained: int  # over all members


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
    keras.mixed_precision.set_global_policy(cfg.precision)


class EpochTimer(keras.callbacks.Callback):
    """Adds epoch_seconds (training and validation wall time) and train_seconds (the training steps
    alone, up to validation: what compares two ways of feeding the same model like for like) to each
    epoch's logs."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started, self.trained = time.perf_counter(), None

    def on_test_begin(self, logs: dict | None = None) -> None:
        if getattr(self, "trained", 0) is None:  # the epoch's validation, not an evaluate() of its own
            self.trained = time.perf_counter() - self.started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        elapsed = time.perf_counter() - self.started
        logs["epoch_seconds"] = elapsed
        logs["train_seconds"] = elapsed if self.trained is None else self.trained


def room_for_backup(model: keras.Model, folder: Path) -> bool:
    """Whether `folder`'s disk holds two copies of the weights (Keras keeps the previous epoch's
    too) besides what is there, with 1 MiB to spare; a warning says what is lost where it does not."""
    needed = 2 * sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights) + 2**20
    held = sum(f.stat().st_size for f in folder.glob("*.h5*")) if folder.is_dir() else 0
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if shutil.disk_usage(existing).free + held >= needed:
        return True
    print(f"warning: no room on the disk of {folder} for the training backup (about {needed // 2**20} "
          "MiB): training goes on without it, and train.resume cannot continue this run if it stops",
          file=sys.stderr)
    return False


class Backup(keras.callbacks.BackupAndRestore):
    """The training state after every epoch (Keras' BackupAndRestore, keeping the previous epoch's
    too), given up for the rest of the fit when the disk has no room for it: a full disk then costs
    the run its resume, not its result. (HDF5, failing mid-write, crashes the process as it exits.)"""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder), double_checkpoint=True)
        self.folder, self.saving = folder, True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.saving = self.saving and room_for_backup(self.model, self.folder)
        if self.saving:
            super().on_epoch_end(epoch, logs)


def compile_model(model: keras.Model, plan: Plan, learning_rate: float, jit_compile: bool = False,
                  decay_steps: int = 0, ema_momentum: float = 0, weight_decay: float = 0,
                  run_eagerly: bool = False) -> None:
    """Adam (its learning rate cosine-decayed to 0 over `decay_steps` if > 0; keeping an exponential
    moving average of the weights if `ema_momentum` > 0; with decoupled weight decay, as AdamW, if
    `weight_decay` > 0), the imbalance plan's loss, and the notebook's per-epoch metrics.
    run_eagerly: no graph traced (train.run_eagerly: debugging, runs of a few steps)."""
    if decay_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    model.compile(
        jit_compile=jit_compile, run_eagerly=run_eagerly,
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
    # Made now, not in the first training step: a step that creates variables is traced twice
    # (2-3 s of graph building per network on 2 cores).
    model.optimizer.build(model.trainable_variables)


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
        Backup(backup),
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


def member_prefix(k: int) -> str:
    """What member k's epoch metrics are logged under: member{k+1}_, none for the first."""
    return f"member{k + 1}_" if k else ""


def train_members(cfg: DictConfig, plan: Plan, batches: Callable[[int], tf.data.Dataset],
                  val: tf.data.Dataset, steps_per_epoch: int, backup: Path,
                  log_epoch: Callable[[int, dict[str, float]], None],
                  member_done: Callable[[str], None]) -> list[keras.Model]:
    """The cfg.train.members networks of a deep ensemble (1: a single network), fitted in turn.

    Member k trains from seed + 1000k: its own initial weights, shuffling and augmentation
    (`batches(seed)` gives its training batches). Its epoch logs reach log_epoch with its
    member_prefix, and member_done(prefix) is called once it is trained. A finished member's weights
    wait in `backup`, so a resumed run skips it; the member being fitted resumes after its last
    completed epoch (see fit).
    """
    size, channels, train = cfg.data.image_size, cfg.data.channels, cfg.train
    decay_steps = train.epochs * steps_per_epoch if train.lr_schedule == "cosine" else 0
    steps = steps_per_epoch if plan.sampling != "none" else None  # endless streams; else the data's own end
    members = []
    for k in range(train.members):
        seed, prefix = cfg.seed + 1000 * k, member_prefix(k)
        keras.utils.set_random_seed(seed)
        model = models.build(cfg.model, cfg.regularization, (size, size, channels))
        finished = backup / f"member{k + 1}.weights.h5"
        if finished.is_file():
            model.load_weights(finished)
        else:
            compile_model(model, plan, train.learning_rate, train.jit_compile, decay_steps,
                          train.ema_momentum, train.weight_decay, train.run_eagerly)
            fit(model, batches(seed), val, train, plan, steps,
                lambda epoch, logs, prefix=prefix: log_epoch(epoch, {prefix + key: value
                                                                      for key, value in logs.items()}),
                backup / f"member{k + 1}")
            if train.members > 1 and room_for_backup(model, backup):
                model.save_weights(finished)
        member_done(prefix)
        members.append(model)
    return members
