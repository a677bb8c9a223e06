"""The path of one run: config checked → skipped if its sweep already finished it, or resumed or
started afresh → MLflow run opened → data loaded → members trained → threshold chosen on validation
and test scored once → results logged. Each stage is a function of stages.py."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pneumo_exp import config, data

if TYPE_CHECKING:
    from pneumo_exp.stages import RunResult


def run_experiment(cfg: DictConfig, overrides: Sequence[str] = ()) -> RunResult:
    """Run the experiment `cfg` describes and log it as one MLflow run.

    In a sweep (a multirun) the run is a child of the sweep's parent run, and a config that
    already FINISHED in this sweep is skipped unless tracking.rerun=true. With train.resume=true the
    newest interrupted run of this config continues from its last completed epoch.
    """
    config.check(cfg)
    data.check(cfg.data, cfg.eval.labelled)
    from pneumo_exp import lifecycle, stages, store, tracking  # MLflow takes seconds to import: only now

    started = time.perf_counter()
    uri = store.open_experiment(cfg.tracking)
    job = stages.prepare(cfg)
    done = stages.finished_in_sweep(cfg, job)
    if done is not None:
        return done
    resume_run_id = stages.resume_or_start_afresh(cfg, job)
    parent_run_id = job.sweep.parent_run_id if job.sweep is not None else None
    # The run opens before the data loads, so that whatever fails from here on ends a FAILED run
    # (a sweep counts its jobs from MLflow).
    with lifecycle.run(job.name, stages.run_tags(cfg, job, overrides), parent_run_id=parent_run_id,
                       resume_run_id=resume_run_id) as active:
        tracking.log_config(cfg)
        dataset = stages.load_data(cfg.data)
        trained = stages.train_model(cfg, dataset, job.backups / active.info.run_id,
                                       active.info.run_id)
        assessment = stages.assess(cfg, trained, dataset)
        stages.log_results(cfg, trained, dataset, assessment, time.perf_counter() - started)
    stages.print_summary(cfg, job, active.info.run_id, dataset, assessment, uri,
                         time.perf_counter() - started)
    return stages.RunResult(active.info.run_id, stages.test_scores(assessment.metrics),
                            assessment.metrics["final_val_auc"])


