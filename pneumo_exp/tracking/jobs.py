"""What a run is before it opens: its name and config hash, its sweep, and whether it is skipped
(already FINISHED in its sweep), resumed (an interrupted run with a backup) or started afresh."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from pneumo_exp import config, redact
from pneumo_exp.tracking import record, sweep
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
    """What a run is before it opens: its name, the hash of its config, and its sweep, if any."""
    name: str
    config_hash: str
    sweep: Sweep | None
    backups: Path  # backup_dir/CONFIG_HASH: per run of this config (by run id), its training state


def prepare(cfg: DictConfig) -> Job:
    """The run's name, config hash, sweep and backups folder (nothing is written yet)."""
    config_hash = config.config_hash(cfg)
    return Job(name=f"{cfg.data.name}-{cfg.imbalance.name}-{cfg.regularization.name}-seed{cfg.seed}",
               config_hash=config_hash, sweep=sweep.current(),
               backups=Path(cfg.tracking.backup_dir).expanduser() / config_hash)


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
    tags |= {"overrides": redact(" ".join(overrides)), "config_hash": job.config_hash,
             "cell_hash": config.config_hash(cfg, "seed"), **record.git_tags()}
    if job.sweep is not None:
        tags |= {"sweep_id": job.sweep.id, "sweep_role": "child"}
    return tags
