"""What report and predict may read back from a store: an experiment that is there and not deleted,
a run that FINISHED with a model. MLflow hides a deleted experiment's runs as if there were none, and
serves a FAILED run's half-logged artifacts: each is refused here with why, and what to pass instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow

from pneumo_exp import UserError, redact

if TYPE_CHECKING:
    import keras


def store() -> str:
    """The current store's URI, as a line may print it (a database password hidden)."""
    return redact(mlflow.get_tracking_uri())


def deleted_experiment(experiment: mlflow.entities.Experiment, instead: str) -> UserError:
    """The line for a deleted experiment: how to restore it (with its runs), or what to pass `instead`."""
    return UserError(f"experiment {experiment.name!r} was deleted: restore it with `MLFLOW_TRACKING_URI="
                     f"{store()} mlflow experiments restore --experiment-id "
                     f"{experiment.experiment_id}`, or {instead}")


def experiment(name: str, option: str = "--experiment") -> mlflow.entities.Experiment:
    """The experiment `name` of the current store, there and not deleted (`option` names it)."""
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        names = sorted(e.name for e in mlflow.search_experiments())
        raise UserError(f"the store {store()} has no experiment {name!r}: pass {option} "
                        f"with one it has ({', '.join(names)})")
    if found.lifecycle_stage == "deleted":
        raise deleted_experiment(found, f"pass {option} with another name")
    return found


def model_run(run_id: str) -> mlflow.entities.Run:
    """The run of a model to score with, if its model can be trusted: not deleted (nor its
    experiment), not a sweep's parent, FINISHED (a FAILED, KILLED or RUNNING run logged its model
    partly or not at all), with its model logged."""
    run = mlflow.get_run(run_id)
    if run.info.lifecycle_stage == "deleted":
        owner = mlflow.get_experiment(run.info.experiment_id)
        if owner.lifecycle_stage == "deleted":
            raise deleted_experiment(owner, "pass the model of a run in another experiment")
        raise UserError(f"run {run_id} was deleted: restore it with `MLFLOW_TRACKING_URI="
                        f"{store()} mlflow runs restore --run-id {run_id}`, or pass "
                        "another run's runs:/RUN_ID/model")
    if run.data.tags.get("sweep_role") == "parent":
        raise UserError(f"run {run_id} is the parent run of sweep {run.data.tags.get('sweep_id')}, which "
                        "trains no model: pass one of its runs' runs:/RUN_ID/model, or the sweep id for a "
                        "cross-validated sweep")
    if run.info.status != "FINISHED":
        raise UserError(f"run {run_id} is {run.info.status}, not FINISHED: its model is missing or not to "
                        "be trusted; pass the runs:/RUN_ID/model of a FINISHED run (`mlflow ui` lists each "
                        "run's status)")
    if run.data.params.get("tracking.log_model") == "False":
        raise UserError(f"run {run_id} logged no model (tracking.log_model=false): pass another run's "
                        "runs:/RUN_ID/model, or train again with tracking.log_model=true")
    return run


def loadable(uri: str) -> str:
    """`uri` as MLflow loads it. Runs since 2026-12-06 name their model after themselves (MLflow 3
    finds `runs:/RUN_ID/NAME` by the model's name), so `runs:/RUN_ID/model`, the URI the docs and
    messages use, is taken to the run's one model; an older run's model is named `model` already."""
    if not (uri.startswith("runs:/") and uri.endswith("/model")):
        return uri
    run = mlflow.get_run(uri.removeprefix("runs:/").split("/")[0])
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    return models[0].model_uri if len(models) == 1 and models[0].name != "model" else uri


def load_model(uri: str) -> keras.Model:
    """The Keras model a run logged, by any URI MLflow takes or `runs:/RUN_ID/model` (loadable)."""
    return mlflow.tensorflow.load_model(loadable(uri))
