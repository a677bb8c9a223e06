"""What a run is before it opens: its name and config hash, its sweep, and whether it is skipped
(already FINISHED in its sweep), resumed (an interrupted run with a backup) or started afresh."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pneumo_exp import config, redact
from pneumo_exp.tracking import names, record, sweep
from pneumo_exp.tracking.results import test_scores
from pneumo_exp.tracking.sweep import Sweep


@dataclass(frozen=True)
class RunResult:
    run_id: str
    scores: dict[str, float]  # test_* metrics (at the validation-chosen threshold)
    val_auc: float  # the final model's validation AUC: what a search optimizes
    skipped: bool = False  # True: this sweep already had a FINISHED run of this config


@dataclass(frozen=True)
class Job:
    """What a run is before it opens: its name, its cell (the name without seed and fold: tag
    `cell`), the hash of its config, and its sweep, if any."""
    name: str
    cell: str
    config_hash: str
    sweep: Sweep | None
    backups: Path  # backup_dir/CONFIG_HASH: per run of this config (by run id), its training state


def prepare(cfg: DictConfig, overrides: Sequence[str] = ()) -> Job:
    """The run's name, config hash, sweep and backups folder (nothing is written yet)."""
    config_hash = config.config_hash(cfg)
    fold = f" fold={cfg.data.fold}" if cfg.data.folds else ""  # a replicate, as the seed is
    cell = cell_name(cfg, overrides)
    return Job(name=f"{cell}{fold} seed={cfg.seed}", cell=cell, config_hash=config_hash,
               sweep=sweep.current(),
               backups=Path(cfg.tracking.backup_dir).expanduser() / config_hash)


LONGEST_CELL_NAME = 200  # a store's database keeps 250 characters of a run's name; fold and seed follow
# Keys that say where the data is, not what it is (the Dataset column says that): left out of names.
# data.fold is a replicate, as the seed is: the run's name ends with both, its cell has neither.
WHERE_DATA_IS = ("data.root", "data.path", "data.url", "data.md5", "data.extra_eval", "data.fold")


@functools.cache
def default_choices() -> dict[str, str]:
    """Each group's choice in conf/config.yaml's defaults list."""
    listed = OmegaConf.load(config.CONF / "config.yaml").defaults
    return {group: choice for item in listed if isinstance(item, DictConfig)
            for group, choice in item.items()}


def cell_name(cfg: DictConfig, overrides: Sequence[str]) -> str:
    """What tells this run's cell from the defaults, short, as MLflow shows the run and a group of
    runs: the data, each recipe (+experiment=NAME), each group choice that is not the default, and
    each key the command set that changes results, by its last part (`train.epochs=5`: epochs=5).
    E.g. `chest_xray quick imbalance=focal image_size=96`."""
    words = [cfg.data.name]
    words += [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")]
    defaults = default_choices()
    words += [f"{group}={cfg[group].name}" for group in sorted(config.GROUPS)
              if group != "data" and config.changes_results(group) and cfg[group].name != defaults[group]]
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if "." in key and config.changes_results(key) and key not in WHERE_DATA_IS:
            words.append(f"{key.rsplit('.', 1)[1]}={value}")
    name = " ".join(words)
    return name if len(name) <= LONGEST_CELL_NAME else name[:LONGEST_CELL_NAME - 1] + "…"


def finished_in_sweep(cfg: DictConfig, job: Job) -> RunResult | None:
    """The result of this config's FINISHED run in this sweep, if there is one and no rerun is asked."""
    if job.sweep is None or cfg.tracking.rerun:
        return None
    done = sweep.finished_run(job.sweep.id, job.config_hash)
    if done is None:
        return None
    print(f"skipped {job.name}: already FINISHED in sweep {job.sweep.id} as run {done.info.run_id}")
    metrics = names.metrics_in_code(done.data.metrics)
    return RunResult(done.info.run_id, test_scores(metrics), metrics["final_val_auc"],
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
    tags |= {"overrides": redact(" ".join(overrides)), "config_hash": job.config_hash,
             "cell": job.cell,
             "cell_hash": config.config_hash(cfg, "seed"), **record.git_tags()}
    if job.sweep is not None:
        tags |= {"sweep_id": job.sweep.id, "sweep_role": "child"}
    return tags
