"""A multirun as one MLflow parent run: opened before any job starts, closed with its report.

Hydra calls this callback in the launching process (conf/config.yaml names it); the jobs may run
elsewhere (launcher=parallel, slurm), so what they did is counted from MLflow. Hydra makes it for
every command, a single run's too: MLflow (1-2 s to import) is imported only once a multirun starts.
"""

import atexit
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pneumo_exp import find, one_line_errors


class SweepCallback(Callback):
    def __init__(self, report: str) -> None:
        """report: the dotted path of the function that writes the sweep's report at its end
        (conf/config.yaml names it, so that tracking/ imports nothing of report/)."""
        self.write_report = report

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the store and the sweep's parent run, and remember what earlier attempts finished.
        Every job's config was composed and checked before Hydra started (pneumo_exp/__main__.py,
        the only way a multirun starts): composing each again here would only repeat that."""
        from pneumo_exp.tracking import lifecycle, store, sweep

        experiment = config.tracking.experiment
        with one_line_errors(), store.refusals(experiment):  # store, experiment, parent before any job
            store.open_experiment(config.tracking)
            definition = sweep.definition(config)
            self.sweep = sweep.open_parent(experiment, sweep.sweep_id(experiment, definition), definition)
        sweep.announce(self.sweep)
        earlier = sweep.jobs(self.sweep.id)
        self.known = {run.info.run_id for run in earlier}
        self.done = {run.data.tags["config_hash"] for run in earlier if run.info.status == "FINISHED"}
        lifecycle.raise_on_signals()  # SIGTERM, too, unwinds the sweep, so atexit closes the parent
        atexit.register(self._close, None)  # the sweep died before on_multirun_end
        print(f"sweep {self.sweep.id}: parent run {self.sweep.parent_run_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Count the jobs, write the report, close the parent; exit 1 if a job did not finish."""
        from pneumo_exp.tracking import store, sweep

        new = [run for run in sweep.jobs(self.sweep.id) if run.info.run_id not in self.known]
        status = Counter(run.info.status for run in new)
        skipped = self.done - {run.data.tags["config_hash"] for run in new}
        out = Path(config.hydra.sweep.dir) / "report"
        reported = bool(status["FINISHED"] or self.done)
        if reported:
            write = find(self.write_report, self.write_report, "hydra.callbacks.sweep.report")
            write(self.sweep.id, out, experiment=config.tracking.experiment)
        failed = len(new) - status["FINISHED"]
        self._close("FAILED" if failed else "FINISHED")
        states = ", ".join(f"{n} {state}" for state, n in sorted(status.items()))
        print(f"sweep {self.sweep.id}: {len(new)} runs made ({states or 'none'}), {len(skipped)} skipped "
              "(already FINISHED; tracking.rerun=true runs them again); "
              + (f"report in {out}" if reported else "no report: no run FINISHED"))
        parent_page = store.ui_page(store.experiment_id(config.tracking.experiment), self.sweep.parent_run_id)
        print(f"its parent run in the MLflow UI: {parent_page}")
        if failed:  # the same command again runs what failed, and only that
            raise SystemExit(f"error: {failed} of the sweep's runs did not finish (tracebacks above)")

    def _close(self, status: str | None) -> None:
        """status None (the process is ending early): KILLED after a signal, else FAILED."""
        import mlflow

        from pneumo_exp.tracking import lifecycle, sweep

        status = status or ("KILLED" if lifecycle.was_interrupted() else "FAILED")
        atexit.unregister(self._close)
        sweep.announce(None)
        mlflow.MlflowClient().set_terminated(self.sweep.parent_run_id, status)
