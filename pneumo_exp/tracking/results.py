"""What a run logs as it goes and prints at its end: the data it loaded, each member's learning
curves, its final metrics, predictions, figures and model, and the summary a researcher reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pneumo_exp import data
from pneumo_exp.evaluation.settings import ADAPT_METHODS, REMOVED_METHODS
from pneumo_exp.tracking import record, store

if TYPE_CHECKING:
    from pneumo_exp.evaluation.scoring import Assessment
    from pneumo_exp.models.train import Trained
    from pneumo_exp.tracking.jobs import Job


def warn_of_extra_sets_shared(dataset: data.Data) -> None:
    """A line for each extra set with patient ids that training or validation images carry too
    (logged as extra_NAME_patients_shared_train_val with the results)."""
    for name, count in dataset.extra_shared.items():
        if count:
            print(f"warning: data.extra_eval.{name} has {count} patient id(s) that training or validation "
                  "images carry too: the same patients, or ids the sources reuse (check before reading it "
                  "as another site)")


def log_data(cfg: DictConfig, dataset: data.Data) -> None:
    """Into the active run: what was left out or duplicated (with a warning), whether patients
    straddle splits, image counts and the splits as MLflow datasets (data_metrics are logged with
    the results: MLflow's compare view opens on the first metric a run logs)."""
    for problem, items in (("files left out", dataset.skipped),
                           ("images found in two splits", dataset.duplicates)):
        if items:
            print(f"warning: {len(items)} {problem} (listed in the run's data/); first: {items[0]}")
    shared = dataset.shared_patients()  # empty: not every image names its patient
    if any(shared.values()):  # only an official test/ folder can share patients with train/
        print(f"warning: the same patients in two splits: {shared}")
    warn_of_extra_sets_shared(dataset)
    tags = {"data_fingerprint": dataset.fingerprint, "test_split": dataset.test_source,
            "data_cache": dataset.cache,
            "patient_disjoint": "unknown" if not shared else str(not any(shared.values())).lower(),
            **{key: str(value) for key, value in dataset.counts().items()}}
    if dataset.source_size:  # predict makes new images as the npz's were made
        tags["source_image_size"] = str(dataset.source_size)
    record.set_tags(tags)
    splits = {name: getattr(dataset, name) for name in data.SPLITS}
    fold = f"-fold{cfg.fold}of{cfg.folds}" if cfg.folds else ""  # the UI's Dataset column says which
    record.log_datasets({name: (split.images, split.labels) for name, split in splits.items()},
                          cfg.name + fold, data_source(cfg), dataset.fingerprint)
    record.log_lines(dataset.skipped, "data/skipped_files.txt")
    record.log_lines(dataset.duplicates, "data/duplicates_across_splits.txt")


def data_metrics(dataset: data.Data, load_seconds: float) -> dict[str, float]:
    """How long loading took, how many files were left out or duplicated, how many patients two
    splits (or an extra set and training) share."""
    return {"data_load_seconds": load_seconds, "n_skipped_files": len(dataset.skipped),
            "n_duplicates_across_splits": len(dataset.duplicates), **dataset.shared_patients(),
            **{f"extra_{name}_patients_shared_train_val": n for name, n in dataset.extra_shared.items()}}


def data_source(cfg: DictConfig) -> str:
    """Where the data came from, as the MLflow datasets name it: the folder, the file or its URL."""
    local = cfg.root if cfg.name == "chest_xray" else cfg.path
    return str(Path(local).expanduser().resolve()) if local else str(cfg.url)


def log_learning_curves(run_id: str, prefix: str) -> None:
    """One member's curves as logged (the whole curve, also across a resume)."""
    from pneumo_exp.evaluation import plots

    keys = [f"{prefix}{split}{curve}" for curve in plots.CURVES for split in ("", "val_")]
    logged = record.epoch_history(run_id, keys)
    history = {key.removeprefix(prefix): values for key, values in logged.items()}
    record.log_figure(plots.learning_curves(history), f"learning_curves_{prefix}".rstrip("_"))


def epochs_trained(run_id: str, members: int) -> int:
    """Epochs logged by all members together."""
    from pneumo_exp.models import train

    keys = [f"{train.member_prefix(k)}loss" for k in range(members)]
    return sum(len(values) for values in record.epoch_history(run_id, keys).values())


def log_results(cfg: DictConfig, trained: Trained, dataset: data.Data, assessment: Assessment,
                seconds: float, load_seconds: float) -> None:
    """Final metrics and tags, what predict needs to adapt, each held-out and validation image's
    prediction, the figures and the model (as tracking.* says)."""
    from pneumo_exp.data import pipeline
    from pneumo_exp.evaluation import explain, plots
    from pneumo_exp.evaluation.scoring import held_out_sets

    record.log_metrics(assessment.metrics | data_metrics(dataset, load_seconds)
                       | {"epochs_trained": trained.epochs_trained, "run_seconds": seconds})
    record.set_tags(assessment.tags)
    for path, lines in assessment.artifacts.items():
        record.log_lines(lines, path)
    y, p = assessment.labels["test"], assessment.probabilities["test"]
    for prefix, split in held_out_sets(dataset).items():
        record.log_predictions(split, assessment.probabilities[prefix], assessment.threshold, prefix)
    if dataset.val.names is not None:
        record.log_validation(dataset.val.names, assessment.labels["val"], assessment.probabilities["val"])
    if cfg.tracking.log_figures:
        t = assessment.threshold
        figures = {"confusion_matrix": plots.confusion_matrix(y, p >= t),
                   "roc_curve": plots.roc_curve(y, p, "test", t), "pr_curve": plots.pr_curve(y, p, "test", t),
                   "reliability": plots.reliability(assessment.labels, assessment.probabilities),
                   **explain.figures(trained.model, dataset.test.images, y, p, t, cfg.data.channels,
                                     dataset.test.names)}
        for name, figure in figures.items():
            record.log_figure(figure, name)
    if cfg.tracking.log_model:  # one test image as fed, and its prediction: the model's signature
        record.log_model(trained.model, pipeline.model_input(dataset.test.images[:1], cfg.data.channels),
                           p[:1, None])


def test_scores(metrics: dict[str, float], prefix: str = "test_") -> dict[str, float]:
    """The plain test scores at the validation-chosen threshold (not their _at_0.5 twins, the bounds
    of their intervals, image counts, the shift check nor the adapted scores); with prefix
    "test_prior_" (..._bn_, _tent_) an adaptation's scores instead."""
    facts = {"tp", "fp", "tn", "fn", "n_bacteria", "n_virus", "estimated_prevalence", "mean_probability",
             "applies", "fit_p", "fit_statistic"}
    adapted = tuple(f"test_{method}_" for method in (*ADAPT_METHODS["all"], *REMOVED_METHODS, "labelled")
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
    for method in ADAPT_METHODS["all"]:
        adapted = test_scores(assessment.metrics, f"test_{method}_")
        if adapted:
            print(f"  adapted ({method}, beside the plain scores): "
                  + "  ".join(f"{key}={value:.3f}" for key, value in adapted.items()))
    print(f"  open the MLflow UI: {store.ui_command(uri)}")
    experiment_id = store.experiment_id(cfg.tracking.experiment)
    print(f"  then its runs table: {store.ui_page(experiment_id)}")
    print(f"  or this run's page: {store.ui_page(experiment_id, run_id)}")
