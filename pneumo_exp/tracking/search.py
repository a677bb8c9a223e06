"""Hyperparameter search: Optuna proposes, Hydra's launcher runs, validation AUC scores.

A Hydra sweeper (`+sweeps=search`) built on Optuna's ask-and-tell API: it asks Optuna for
`max_batch_size` trials, launches them with whatever launcher is configured (one by one,
launcher=parallel, SLURM), and tells Optuna each trial's validation AUC. Every trial is an
ordinary job of the multirun, so it is a child run under the sweep's parent, is skipped when
already FINISHED, and appears in the report.
Why not hydra-optuna-sweeper: its 1.3.0 pins optuna<3, whose SQLite study storage fails under the
SQLAlchemy 2 that MLflow needs; this file is that plugin's core on the current Optuna.
The objective is validation AUC only: test metrics are logged by each run, never read here.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import UserError, one_line_errors


def distribution(override: Override) -> Any:
    """Hydra's sweep syntax as an Optuna distribution: choice(...) and range(...) are categorical,
    interval(a, b) is uniform (integer if both ends are), tag(log, interval(a, b)) log-uniform."""
    import optuna.distributions as d

    value = override.value()
    if isinstance(value, ChoiceSweep | RangeSweep):
        return d.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log)
        return d.FloatDistribution(value.start, value.end, log=log)
    raise UserError(f"search param {override.key_or_group}={override.input_line} is not a range: "
                    "use choice(a, b), range(a, b), interval(a, b) or tag(log, interval(a, b))")


class SearchSweeper(Sweeper):
    def __init__(self, n_trials: int, max_batch_size: int, seed: int, storage: str | None,
                 study_name: str | None, params: dict[str, str]) -> None:
        self.n_trials, self.max_batch_size, self.seed = n_trials, max_batch_size, seed
        self.storage, self.study_name, self.params = storage, study_name, params

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        with one_line_errors():
            self.search(arguments)

    def search(self, arguments: list[str]) -> None:
        """Ask, launch, tell until n_trials; log the best trial to the sweep's parent run. (Hydra
        imports this module, through hydra_plugins/, for every command: MLflow only as a search runs.)"""
        try:
            import optuna
        except ImportError as error:
            raise UserError('the search needs Optuna: pip install -e ".[search]"') from error
        import mlflow

        from pneumo_exp.tracking import sweep
        parser = OverridesParser.create()
        fixed = parser.parse_overrides(arguments)
        if any(o.is_sweep_override() for o in fixed):
            raise UserError("a search takes its ranges from hydra.sweeper.params, not the command "
                            f"line: move {next(o.input_line for o in fixed if o.is_sweep_override())} there")
        space = {o.get_key_element(): distribution(o) for o in
                 parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])}
        current = sweep.current()  # announced by multirun.SweepCallback before this runs
        sweep_id, parent_id = current.id, current.parent_run_id
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=self.seed),
                                    storage=self.storage, study_name=self.study_name or sweep_id,
                                    load_if_exists=True)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        while len(study.trials) < self.n_trials:
            batch_size = min(self.max_batch_size, self.n_trials - len(study.trials))
            trials = [study.ask(space) for _ in range(batch_size)]
            batch = [[*arguments, *(f"{key}={value}" for key, value in trial.params.items())]
                     for trial in trials]
            for trial, job in zip(trials, self.launch(batch, len(study.trials) - len(trials)),
                                  strict=True):
                if job.status == JobStatus.COMPLETED and job.return_value is not None:
                    study.tell(trial, job.return_value.val_auc)
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            print(f"search {sweep_id}: no trial finished, so there is no best (errors above)")
            return  # the sweep's end then counts the failed runs and exits with code 1
        best = study.best_trial
        client = mlflow.MlflowClient()
        client.log_metric(parent_id, "best_val_auc", best.value)
        client.set_tag(parent_id, "best_params", json.dumps(best.params, sort_keys=True))
        print(f"search {sweep_id}: best validation AUC {best.value:.4f} with "
              + " ".join(f"{k}={v}" for k, v in best.params.items()))

    def launch(self, batch: Sequence[Sequence[str]], first_index: int) -> Sequence[Any]:
        self.validate_batch_is_legal(batch)
        return self.launcher.launch(batch, initial_job_idx=first_index)
