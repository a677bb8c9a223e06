"""A multirun as one MLflow parent run: opened before any job starts, closed with its report.

Hydra calls this callback in the launching process. The sweep id is a hash of the sweep's
definition (command-line overrides and sweeper params), so the same command finds the same parent
and its jobs skip what already FINISHED: an interrupted sweep resumes.
"""

import atexit
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import one_line_errors, tracking


def sweep_definition(config: DictConfig) -> dict[str, Any]:
    """What the sweep computes: its overrides (less those of tracking.HOW_IT_RUNS, so that adding
    launcher=, train.resume=true or tracking.rerun=true finds the same sweep) and sweeper params."""
    params = config.hydra.sweeper.get("params")
    overrides = [o for o in config.hydra.overrides.task
                 if tracking.changes_results(o.lstrip("+~").split("=", 1)[0])]
    return {"overrides": sorted(overrides),
            "params": OmegaConf.to_container(params, resolve=True) if params else {}}


def sweep_name(definition: dict[str, Any]) -> str:
    """`ablation` for `+sweeps=ablation`, else `multirun`."""
    presets = [o.split("=", 1)[1] for o in definition["overrides"] if o.startswith("+sweeps=")]
    return presets[0] if presets else "multirun"


class SweepCallback(Callback):
    """Runs in the launching process; jobs may run elsewhere (launcher=parallel, slurm), so what
    they did is counted from MLflow."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with one_line_errors():  # store and experiment exist before any job
            tracking.open_experiment(config.tracking)
        definition = sweep_definition(config)
        blob = json.dumps([config.tracking.experiment, definition], sort_keys=True)
        self.sweep_id = hashlib.sha256(blob.encode()).hexdigest()[:10]
        self.parent_id = tracking.open_parent(config.tracking.experiment, self.sweep_id,
                                              sweep_name(definition), definition)
        os.environ[tracking.SWEEP_ENV] = f"{self.sweep_id} {self.parent_id}"
        jobs = tracking.sweep_jobs(self.sweep_id)  # from earlier attempts of this sweep
        self.known = {run.info.run_id for run in jobs}
        self.done = {run.data.tags["config_hash"] for run in jobs if run.info.status == "FINISHED"}
        tracking.raise_on_signals()  # SIGTERM, too, unwinds the sweep, so atexit closes the parent
        atexit.register(self._close, None)  # the sweep died before on_multirun_end
        print(f"sweep {self.sweep_id}: parent run {self.parent_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pneumo_exp import report  # matplotlib and scipy: only once the jobs are done

        new = [run for run in tracking.sweep_jobs(self.sweep_id) if run.info.run_id not in self.known]
        status = Counter(run.info.status for run in new)
        skipped = self.done - {run.data.tags["config_hash"] for run in new}
        out = Path(config.hydra.sweep.dir) / "report"
        reported = bool(status["FINISHED"] or self.done)
        if reported:
            report.write_report(self.sweep_id, out, experiment=config.tracking.experiment)
        failed = len(new) - status["FINISHED"]
        self._close("FAILED" if failed else "FINISHED")
        states = ", ".join(f"{n} {state}" for state, n in sorted(status.items()))
        print(f"sweep {self.sweep_id}: {len(new)} runs made ({states or 'none'}), {len(skipped)} skipped "
              "(already FINISHED; tracking.rerun=true runs them again); "
              + (f"report in {out}" if reported else "no report: no run FINISHED"))
        if failed:  # the same command again runs what failed, and only that
            raise SystemExit(f"error: {failed} of the sweep's runs did not finish (tracebacks above)")

    def _close(self, status: str | None) -> None:
        """status None (the process is ending early): KILLED after a signal, else FAILED."""
        status = status or ("KILLED" if tracking.was_interrupted() else "FAILED")
        atexit.unregister(self._close)
        os.environ.pop(tracking.SWEEP_ENV, None)
        mlflow.MlflowClient().set_terminated(self.parent_id, status)
