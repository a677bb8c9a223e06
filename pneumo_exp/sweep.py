"""A multirun as one MLflow parent run: opened before any job starts, closed with its report.

Hydra calls this callback in the launching process. The sweep id is a hash of the sweep's
definition (command-line overrides and sweeper params), so the same command finds the same parent
and its jobs skip what already FINISHED: an interrupted sweep resumes.
"""

import atexit
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import mlflow
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import tracking


def sweep_definition(config: DictConfig) -> dict[str, Any]:
    params = config.hydra.sweeper.get("params")
    return {"overrides": sorted(config.hydra.overrides.task),
            "params": OmegaConf.to_container(params, resolve=True) if params else {}}


def sweep_name(definition: dict[str, Any]) -> str:
    """`ablation` for `+sweeps=ablation`, else `multirun`."""
    presets = [o.split("=", 1)[1] for o in definition["overrides"] if o.startswith("+sweeps=")]
    return presets[0] if presets else "multirun"


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking.open_experiment(config.tracking)  # store and experiment exist before any job
        definition = sweep_definition(config)
        blob = json.dumps([config.tracking.experiment, definition], sort_keys=True)
        self.sweep_id = hashlib.sha256(blob.encode()).hexdigest()[:10]
        self.parent_id = tracking.open_parent(config.tracking.experiment, self.sweep_id,
                                              sweep_name(definition), definition)
        os.environ[tracking.SWEEP_ENV] = f"{self.sweep_id} {self.parent_id}"
        self.ran = self.skipped = 0
        atexit.register(self._close, "FAILED")  # the sweep died before on_multirun_end
        print(f"sweep {self.sweep_id}: parent run {self.parent_id}")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED:
            if job_return.return_value.skipped:
                self.skipped += 1
            else:
                self.ran += 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pneumo_exp import report  # matplotlib and scipy: only once the jobs are done

        out = Path(config.hydra.sweep.dir) / "report"
        report.write_report(self.sweep_id, out, experiment=config.tracking.experiment)
        self._close("FINISHED")
        print(f"sweep {self.sweep_id}: {self.ran} runs made, {self.skipped} skipped "
              f"(already FINISHED; tracking.rerun=true runs them again); report in {out}")

    def _close(self, status: str) -> None:
        atexit.unregister(self._close)
        os.environ.pop(tracking.SWEEP_ENV, None)
        mlflow.MlflowClient().set_terminated(self.parent_id, status)
