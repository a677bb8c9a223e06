"""The stages of one run, in the order run.run_experiment lists them. MLflow is imported with this
module (after the config checks passed); TensorFlow only by the stages that train and score, after
the data has loaded."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from pneumo_exp import config, data, store, sweep, tracking
from pneumo_exp.sweep import Sweep

if TYPE_CHECKING:
    import keras

    from pneumo_exp.imbalance import Plan


@dataclass(frozen=True)
class RunResult:
    run_id: str
    scores: dict[str, float]  # test_* metrics (at the validation-chosen threshold)
    val_auc: float  # the final model's validation AUC: what a search optimizes
    skipped: bool = False  # True: this sweep already had a FINISHED run of this config


@dataclass(frozen=True)
class Job:
    """What a run is before it opens: its name, the hash of its config, and its sweep, if any."""
    name: str
    config_hash: str
    sweep: Sweep | None
    backups: Path  # backup_dir/CONFIG_HASH: per run of this config (by run id), its training state


@dataclass(frozen=True)
class Trained:
    model: keras.Model  # what is scored and logged: the members' mean, with TTA if asked
    plan: Plan
    epochs_trained: int  # over all members


@dataclass(frozen=True)
class Assessment:
    labels: dict[str, np.ndarray]  # "val", "test"
    probabilities: dict[str, np.ndarray]
    threshold: float  # chosen on validation
    metrics: dict[str, float]


def prepare(cfg: DictConfig) -> Job:
    """The run's name, config hash, sweep and backups folder (nothing is written yet)."""
    config_hash = config.config_hash(cfg)
    return Job(name=f"{cfg.data.name}-{cfg.imbalance.name}-{cfg.regularization.name}-seed{cfg.seed}",
               config_hash=config_hash, sweep=sweep.current(),
               backups=Path(cfg.tracking.backup_dir) / config_hash)


def finished_in_sweep(cfg: DictConfig, job: Job) -> RunResult | None:
    """The result of this config's FINISHED run in this sweep, if there is one and no rerun is asked."""
    if job.sweep is None or cfg.tracking.rerun:
        return None
    done = sweep.finished_run(job.sweep.id, job.config_hash)
    if done is None:
        return None
    print(f"skipped {job.name}: already FINISHED in sweep {job.sweep.id} as run {done.info.run_id}")
    return RunResult(done.info.run_id, test_scores(done.data.metrics), done.data.metrics["final_val_auc"],
                     skipped=True)


def resume_or_start_afresh(cfg: DictConfig, job: Job) -> str | None:
    """The id of the interrupted run that train.resume continues (its backup is there), or None
    with the backups of this config's ended runs cleared, so that a fresh run starts from epoch 1.
    Backups are kept per run: the same config started twice at once trains twice, each from its own."""
    if cfg.train.resume:
        interrupted = sweep.interrupted_run(job.config_hash, job.sweep)
        if interrupted is not None and (job.backups / interrupted.info.run_id).is_dir():
            return interrupted.info.run_id
        print(f"train.resume: no interrupted run of {job.name} with a backup in {job.backups}; "
              "starting anew")
    for backup in job.backups.iterdir() if job.backups.is_dir() else []:
        if not sweep.is_running(backup.name):  # a run of this config in another terminal keeps its
            shutil.rmtree(backup, ignore_errors=True)
    return None


def run_tags(cfg: DictConfig, job: Job, overrides: Sequence[str]) -> dict[str, str]:
    """The choice of every config group, the command's overrides, the hashes, the commit and the sweep."""
    tags = {group: cfg[group].name for group in config.GROUPS}
    tags |= {"overrides": " ".join(overrides), "config_hash": job.config_hash,
             "cell_hash": config.config_hash(cfg, "seed"), **tracking.git_tags()}
    if job.sweep is not None:
        tags |= {"sweep_id": job.sweep.id, "sweep_role": "child"}
    return tags


def load_data(cfg: DictConfig) -> data.Data:
    """The `data` stage, logged into the active run: what was left out or duplicated (with a warning),
    whether patients straddle splits, image counts, and how long loading took."""
    started = time.perf_counter()
    dataset = data.load(cfg)
    load_seconds = time.perf_counter() - started
    for problem, items in (("files left out", dataset.skipped),
                           ("images found in two splits", dataset.duplicates)):
        if items:
            print(f"warning: {len(items)} {problem} (listed in the run's data/); first: {items[0]}")
    shared = dataset.shared_patients()  # empty: not every image names its patient
    if any(shared.values()):  # only an official test/ folder can share patients with train/
        print(f"warning: the same patients in two splits: {shared}")
    tags = {"data_fingerprint": dataset.fingerprint, "test_split": dataset.test_source,
            "data_cache": dataset.cache,
            "patient_disjoint": "unknown" if not shared else str(not any(shared.values())).lower(),
            **{key: str(value) for key, value in dataset.counts().items()}}
    if dataset.source_size:  # predict makes new images as the npz's were made
        tags["source_image_size"] = str(dataset.source_size)
    tracking.set_tags(tags)
    tracking.log_metrics({"data_load_seconds": load_seconds, "n_skipped_files": len(dataset.skipped),
                          "n_duplicates_across_splits": len(dataset.duplicates), **shared})
    splits = {name: getattr(dataset, name) for name in data.SPLITS}
    tracking.log_datasets({name: (split.images, split.labels) for name, split in splits.items()},
                          cfg.name, data_source(cfg), dataset.fingerprint)
    tracking.log_lines(dataset.skipped, "data/skipped_files.txt")
    tracking.log_lines(dataset.duplicates, "data/duplicates_across_splits.txt")
    return dataset


def data_source(cfg: DictConfig) -> str:
    """Where the data came from, as the MLflow datasets name it: the folder, the file or its URL."""
    local = cfg.root if cfg.name == "chest_xray" else cfg.path
    return str(Path(local).expanduser().resolve()) if local else str(cfg.url)


def train_model(cfg: DictConfig, dataset: data.Data, backup: Path, run_id: str) -> Trained:
    """The imbalance plan from the training labels, augmented training batches, and the members
    trained (train.train_members), each member's curves logged as it ends. TensorFlow loads only
    now (~5 s), after config and data have had their chance to fail."""
    import keras

    from pneumo_exp import augment, imbalance, models, plots, train
    from pneumo_exp.data import pipeline

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
        tracking.log_figure(plots.image_grid(pixels.numpy(), labels.numpy()), "train_batch")
    members = train.train_members(
        cfg, plan, training_batches, pipeline.batches(dataset.val, batch, channels),
        imbalance.steps_per_epoch(plan, dataset.train.labels, batch), backup, tracking.log_epoch,
        member_done=lambda prefix: log_learning_curves(run_id, prefix) if figures else None)
    shutil.rmtree(backup, ignore_errors=True)
    with contextlib.suppress(OSError):  # the config's folder, once no run of it has a backup
        backup.parent.rmdir()
    model = models.with_tta(models.averaged(members), cfg.train.tta_shift)
    return Trained(model, plan, epochs_trained(run_id, cfg.train.members))


def log_learning_curves(run_id: str, prefix: str) -> None:
    """One member's curves as logged (the whole curve, also across a resume)."""
    from pneumo_exp import plots

    keys = [f"{prefix}{split}{curve}" for curve in plots.CURVES for split in ("", "val_")]
    logged = tracking.epoch_history(run_id, keys)
    history = {key.removeprefix(prefix): values for key, values in logged.items()}
    tracking.log_figure(plots.learning_curves(history), f"learning_curves_{prefix}".rstrip("_"))


def epochs_trained(run_id: str, members: int) -> int:
    """Epochs logged by all members together."""
    from pneumo_exp import train

    keys = [f"{train.member_prefix(k)}loss" for k in range(members)]
    return sum(len(values) for values in tracking.epoch_history(run_id, keys).values())


def assess(cfg: DictConfig, trained: Trained, dataset: data.Data) -> Assessment:
    """The threshold chosen on validation, then validation and test scored at it (test once), with
    95% intervals of the test scores by bootstrap over test patients, and every held-out set scored
    once (scoring.py: where it fails, shift, adapted scores)."""
    from pneumo_exp import evaluate, intervals, scoring
    from pneumo_exp.data import pipeline

    splits = {"val": dataset.val, "test": dataset.test}
    labels = {name: split.labels for name, split in splits.items()}
    probabilities = {name: evaluate.predicted_probabilities(
        trained.model, pipeline.batches(split, cfg.train.batch_size, cfg.data.channels))
        for name, split in splits.items()}
    threshold, metrics = evaluate.assess(labels, probabilities, trained.plan, cfg.train)
    metrics |= scoring.score_held_out(cfg, trained.model, dataset, threshold, probabilities["val"],
                                      probabilities["test"])
    test_intervals = intervals.of_test_scores(labels["test"], probabilities["test"], dataset.test.patients,
                                              threshold, cfg.seed)
    metrics |= test_intervals
    tracking.set_tags({"test_ci": intervals.described(dataset.test.patients, test_intervals)})
    return Assessment(labels, probabilities, threshold, metrics)


def log_results(cfg: DictConfig, trained: Trained, dataset: data.Data, assessment: Assessment,
                seconds: float) -> None:
    """Final metrics, each test image's prediction, the figures and the model (as tracking.* says)."""
    from pneumo_exp import explain, plots
    from pneumo_exp.data import pipeline

    tracking.log_metrics(assessment.metrics | {"epochs_trained": trained.epochs_trained,
                                               "run_seconds": seconds})
    y, p = assessment.labels["test"], assessment.probabilities["test"]
    tracking.log_predictions(y, p)
    if cfg.tracking.log_figures:
        figures = {"confusion_matrix": plots.confusion_matrix(y, p >= assessment.threshold),
                   "roc_curve": plots.roc_curve(y, p), "pr_curve": plots.pr_curve(y, p),
                   "reliability": plots.reliability(assessment.labels, assessment.probabilities),
                   **explain.figures(trained.model, dataset.test.images, y, p, assessment.threshold,
                                     cfg.data.channels)}
        for name, figure in figures.items():
            tracking.log_figure(figure, name)
    if cfg.tracking.log_model:  # one test image as fed, and its prediction: the model's signature
        tracking.log_model(trained.model, pipeline.model_input(dataset.test.images[:1], cfg.data.channels),
                           p[:1, None])


def test_scores(metrics: dict[str, float], prefix: str = "test_") -> dict[str, float]:
    """The plain test scores at the validation-chosen threshold (not their _at_0.5 twins, the bounds
    of their intervals, image counts, the shift check nor the adapted scores); with prefix
    "test_prior_" (..._bn_, _both_) an adaptation's scores instead."""
    facts = {"tp", "fp", "tn", "fn", "n_bacteria", "n_virus", "estimated_prevalence", "mean_probability",
             "applies", "fit_p", "fit_statistic"}
    adapted = tuple(f"test_{method}_" for method in (*config.ADAPT_METHODS["all"], "labelled")
                    if f"test_{method}_" != prefix)
    return {k: v for k, v in metrics.items() if k.startswith(prefix) and not k.startswith(adapted)
            and k.removeprefix(prefix) not in facts and not k.endswith(("_at_0.5", "_ci_low", "_ci_high"))}


def with_interval(metrics: dict[str, float], key: str) -> str:
    """`key=value`, and its 95% interval where the run has one."""
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return f"{key}={metrics[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def print_summary(cfg: DictConfig, job: Job, run_id: str, dataset: data.Data, assessment: Assessment,
                  uri: str, seconds: float) -> None:
    """What the run found, and where to look at it."""
    print(f"\nrun {run_id} ({job.name}) finished in {seconds:.0f} s; test split: {dataset.test_source}")
    print(f"  at the threshold chosen on validation ({cfg.train.threshold}): {assessment.threshold:.3f}")
    print("  " + "  ".join(with_interval(assessment.metrics, key) for key in test_scores(assessment.metrics)))
    for method in config.ADAPT_METHODS["all"]:
        adapted = test_scores(assessment.metrics, f"test_{method}_")
        if adapted:
            print(f"  adapted ({method}, beside the plain scores): "
                  + "  ".join(f"{key}={value:.3f}" for key, value in adapted.items()))
    print(f"  open the MLflow UI: {store.ui_command(uri)}")
    print(f"  then its runs table: {store.ui_page(store.experiment_id(cfg.tracking.experiment))}")
