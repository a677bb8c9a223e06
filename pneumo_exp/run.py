"""The path of one run, each stage a function of the folder it belongs to: config checked → skipped
if its sweep already finished it, or resumed or started afresh (tracking/jobs.py) → MLflow run
opened → data loaded (data/) → members trained (models/) → threshold chosen on validation and every
held-out set scored once (evaluation/) → results logged (tracking/results.py)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pneumo_exp import config, data, models

if TYPE_CHECKING:
    from pneumo_exp.evaluation.scoring import Assessment
    from pneumo_exp.models.train import Trained
    from pneumo_exp.tracking.jobs import RunResult


def run_experiment(cfg: DictConfig, overrides: Sequence[str] = ()) -> RunResult:
    """Run the experiment `cfg` describes and log it as one MLflow run.

    In a sweep (a multirun) the run is a child of the sweep's parent run, and a config that
    already FINISHED in this sweep is skipped unless tracking.rerun=true. With train.resume=true the
    newest interrupted run of this config continues from its last completed epoch.
    """
    config.check(cfg)
    data.check(cfg.data, cfg.eval.labelled)
    from pneumo_exp.tracking import jobs, lifecycle, record, results, store  # MLflow: seconds, only now

    started = time.perf_counter()
    uri = store.open_experiment(cfg.tracking)
    job = jobs.prepare(cfg, overrides)
    done = jobs.finished_in_sweep(cfg, job)
    if done is not None:
        return done
    resume_run_id = jobs.resume_or_start_afresh(cfg, job)
    parent_run_id = job.sweep.parent_run_id if job.sweep is not None else None
    # The run opens before the data loads, so that whatever fails from here on ends a FAILED run
    # (a sweep counts its jobs from MLflow). A server that refuses the user says so in one line.
    with store.refusals(cfg.tracking.experiment), lifecycle.run(
            job.name, jobs.run_tags(cfg, job, overrides), parent_run_id=parent_run_id,
            resume_run_id=resume_run_id) as active:
        record.log_config(cfg)
        models.fetch(cfg.model)  # e.g. ImageNet weights: a missing network fails before the data loads
        dataset, load_seconds = load_data(cfg.data)
        trained = train_model(cfg, dataset, job.backups / active.info.run_id, active.info.run_id)
        assessment = assess(cfg, trained, dataset)
        results.log_results(cfg, trained, dataset, assessment, time.perf_counter() - started, load_seconds)
    results.print_summary(cfg, job, active.info.run_id, dataset, assessment, uri,
                          time.perf_counter() - started)
    return jobs.RunResult(active.info.run_id, results.test_scores(assessment.metrics),
                          assessment.metrics["final_val_auc"])


def load_data(cfg: DictConfig) -> tuple[data.Data, float]:
    """The `data` stage, logged into the active run (tracking/results.log_data), and its seconds."""
    from pneumo_exp.tracking import results

    started = time.perf_counter()
    dataset = data.load(cfg)
    results.log_data(cfg, dataset)
    return dataset, time.perf_counter() - started


def assess(cfg: DictConfig, trained: Trained, dataset: data.Data) -> Assessment:
    """The `evaluate` stage (evaluation/scoring.assess): TensorFlow is loaded by now."""
    from pneumo_exp.evaluation import scoring

    return scoring.assess(cfg, trained.model, trained.plan, dataset)


def train_model(cfg: DictConfig, dataset: data.Data, backup: Path, run_id: str) -> Trained:
    """The imbalance plan from the training labels, augmented training batches, and the members
    trained (models/train.train_members), each member's curves logged as it ends. TensorFlow loads
    only now (~5 s), after config and data have had their chance to fail."""
    import keras

    from pneumo_exp.data import pipeline
    from pneumo_exp.evaluation import plots
    from pneumo_exp.models import augment, imbalance, train
    from pneumo_exp.tracking import record, results

    keras.backend.clear_session()  # jobs of a multirun share the process: start each afresh
    train.configure(cfg.train)  # after: clearing the session also resets Keras's precision policy
    keras.utils.set_random_seed(cfg.seed)
    plan = imbalance.plan(cfg.imbalance, dataset.train.labels)
    batch, channels, figures = cfg.train.batch_size, cfg.data.channels, cfg.tracking.log_figures

    def training_batches(seed: int):
        return augment.apply(pipeline.batches(dataset.train, batch, channels, shuffle=True,
                                              sampling=plan.sampling, seed=seed), cfg.augment, seed)

    if figures:
        pixels, labels = next(iter(training_batches(cfg.seed).unbatch().batch(16)))
        record.log_figure(plots.image_grid(pixels.numpy(), labels.numpy()), "train_batch")
    members = train.train_members(
        cfg, plan, training_batches, pipeline.batches(dataset.val, batch, channels),
        imbalance.steps_per_epoch(plan, dataset.train.labels, batch), backup, record.log_epoch,
        member_done=lambda prefix: results.log_learning_curves(run_id, prefix) if figures else None)
    shutil.rmtree(backup, ignore_errors=True)
    with contextlib.suppress(OSError):  # the config's folder, once no run of it has a backup
        backup.parent.rmdir()
    model = models.with_tta(models.averaged(members), cfg.train.tta_shift)
    return train.Trained(model, plan, results.epochs_trained(run_id, cfg.train.members))
