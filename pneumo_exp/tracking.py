"""The MLflow side of a run: the store, the run's life (it always ends), and what it logs.

It is told what to log; it never reaches back into data or training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import UserError

if TYPE_CHECKING:  # TensorFlow loads only where a model is logged
    import keras

SQLITE = "sqlite:///"
SWEEP_ENV = "PNEUMO_EXP_SWEEP"  # "SWEEP_ID PARENT_RUN_ID", set for the jobs of a multirun


def store_uri(uri: str) -> str:
    """The tracking URI, with a relative SQLite path made absolute so `mlflow ui` works from anywhere."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        path = Path(uri.removeprefix(SQLITE)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = SQLITE + str(path)
    return uri


def _check_server(uri: str) -> None:
    """A tracking server that does not answer fails now, not after MLflow's minutes of retries."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except OSError as error:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({error}): start it "
                        "(see README) or pass another tracking.uri") from error


def open_experiment(cfg: DictConfig) -> str:
    """Point MLflow at the store and experiment (created, with its artifact folder, on first use),
    and end the runs that a killed process left RUNNING. Returns the store's URI."""
    uri = str(cfg.uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    try:
        uri = store_uri(uri)
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(cfg.experiment) is None:
            location = cfg.artifact_location
            if location:
                Path(location).resolve().mkdir(parents=True, exist_ok=True)
            mlflow.create_experiment(cfg.experiment, artifact_location=Path(location).resolve().as_uri()
                                     if location else None)
        mlflow.set_experiment(cfg.experiment)
    except Exception as error:  # sqlite, alembic and OS errors alike: the store is not usable
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot open the MLflow store {uri} ({reason}): make its folder writable "
                        "or pass tracking.uri=sqlite:////writable/path/mlflow.db") from error
    end_orphaned_runs()
    return uri


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tags() -> dict[str, str]:
    """Where a run's process lives, so a later process can tell when it died (SIGKILL, power)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def end_orphaned_runs() -> None:
    """Mark KILLED every RUNNING run of this experiment whose process on this host is gone."""
    host = socket.gethostname()
    for run in mlflow.search_runs(filter_string="attributes.status = 'RUNNING'", output_format="list"):
        pid = run.data.tags.get("pid", "")
        if run.data.tags.get("host") == host and pid.isdigit() and not _alive(int(pid)):
            client = mlflow.MlflowClient()
            client.set_tag(run.info.run_id, "error", f"process {pid} ended without closing the run")
            client.set_terminated(run.info.run_id, "KILLED")


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store, as printed after each run."""
    return f"mlflow ui --backend-store-uri {uri}"


_signals: list[str] = []  # SIGINT/SIGTERM received during the current run


def _raise_interrupt(signum: int, frame: object) -> None:
    _signals.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_signals[-1])


def raise_on_signals() -> dict[int, object]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (so `finally` and atexit still run) and are
    remembered; returns the handlers replaced. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def was_interrupted() -> bool:
    """Whether SIGINT or SIGTERM arrived since the current (or last) run started."""
    return bool(_signals)


def _check_interrupt() -> None:
    """Python can swallow a handler's KeyboardInterrupt (one raised inside a weakref callback or
    a TensorFlow iterator): re-raise it at the next epoch end and when the run closes."""
    if _signals:
        raise KeyboardInterrupt(_signals[-1])


# Config keys that say where a run is logged, how it is executed, whether it continues and where
# decoded images are kept: they change nothing it computes, so they are left out of config_hash,
# of a sweep's identity and of a report's cell names.
HOW_IT_RUNS = ("tracking", "launcher", "train.resume", "train.intra_op_threads",
               "train.inter_op_threads", "data.cache_dir")


def changes_results(key: str) -> bool:
    """False for a dotted config key (`launcher.jobs`, `tracking`) under HOW_IT_RUNS."""
    return not any(key == k or key.startswith(f"{k}.") for k in HOW_IT_RUNS)


def config_hash(cfg: DictConfig, *leave_out: str) -> str:
    """Stable hash of the resolved config without HOW_IT_RUNS and the top-level keys in leave_out."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in (*HOW_IT_RUNS, *leave_out):
        *parents, last = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def current_sweep() -> tuple[str, str] | None:
    """(sweep id, parent run id) when this process runs a job of a multirun."""
    value = os.environ.get(SWEEP_ENV)
    return tuple(value.split()) if value else None


def finished_run(sweep_id: str, config_hash: str) -> mlflow.entities.Run | None:
    """A FINISHED run of this sweep with this exact config, if there is one."""
    runs = mlflow.search_runs(
        filter_string=f"tags.sweep_id = '{sweep_id}' and tags.config_hash = '{config_hash}' "
                      "and attributes.status = 'FINISHED'",
        output_format="list", max_results=1)
    return runs[0] if runs else None


def sweep_jobs(sweep_id: str) -> list[mlflow.entities.Run]:
    """Every child run of the sweep, in any state."""
    return mlflow.search_runs(filter_string=f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'child'",
                              output_format="list")


def find_parent(experiment: str, sweep_id: str) -> mlflow.entities.Run | None:
    """The sweep's parent run, if an earlier attempt of the same sweep made it."""
    found = mlflow.search_runs(
        experiment_names=[experiment], output_format="list", max_results=1,
        filter_string=f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'parent'")
    return found[0] if found else None


def open_parent(experiment: str, sweep_id: str, name: str, definition: dict) -> str:
    """The sweep's parent run (reopened when the same sweep runs again); returns its id."""
    client = mlflow.MlflowClient()
    found = find_parent(experiment, sweep_id)
    if found:
        run_id = found.info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in process_tags().items():
            client.set_tag(run_id, key, value)
        return run_id
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    run = client.create_run(experiment_id, run_name=f"sweep-{name}-{sweep_id}", tags={
        "sweep_id": sweep_id, "sweep_role": "parent", "sweep_name": name,
        "sweep_overrides": " ".join(definition["overrides"]), **git_tags(), **process_tags()})
    client.log_text(run.info.run_id, json.dumps(definition, indent=2, sort_keys=True), "sweep.json")
    return run.info.run_id


def interrupted_run(config_hash: str, sweep_id: str | None) -> mlflow.entities.Run | None:
    """The newest run of this config (in this sweep, if any), if it was KILLED or FAILED: what
    train.resume continues."""
    query = f"tags.config_hash = '{config_hash}'"
    if sweep_id:
        query += f" and tags.sweep_id = '{sweep_id}'"
    runs = mlflow.search_runs(filter_string=query, order_by=["attributes.start_time DESC"],
                              output_format="list", max_results=1)
    return runs[0] if runs and runs[0].info.status in ("KILLED", "FAILED") else None


def epoch_history(run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """Per-epoch values as logged, in epoch order: the whole curve, also across a resume."""
    client = mlflow.MlflowClient()
    return {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in keys}


@contextlib.contextmanager
def run(name: str, tags: dict[str, str], parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run (a new one, or `resume_run_id` reopened) that always ends: FINISHED; KILLED on
    Ctrl-C or SIGTERM; FAILED on any error, with the error tagged. Whatever was logged before the end
    stays logged."""
    previous = raise_on_signals()
    _signals.clear()
    tags = {**tags, **process_tags()}
    try:
        with mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else name, tags=tags,
                              parent_run_id=None if resume_run_id else parent_run_id) as active:
            failure = resume_run_id and active.data.tags.get("error")
            if failure:  # `error` marks a failed run: a resumed one keeps it under another name
                mlflow.set_tag("resumed_after_error", failure)
                mlflow.MlflowClient().delete_tag(resume_run_id, "error")
            try:
                yield active
                _check_interrupt()
            except KeyboardInterrupt:
                mlflow.end_run("KILLED")
                raise
            except Exception as error:
                with contextlib.suppress(Exception):
                    mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
                raise  # start_run's own exit marks the run FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def git_tags() -> dict[str, str]:
    """The commit of this checkout and whether it had uncommitted changes ("unknown" outside a git
    checkout, or where git is not installed)."""
    def git(*args: str) -> str:
        try:
            result = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                                    text=True, check=False)
        except OSError:  # no git on this machine
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit or "unknown",
            "git_dirty": str(bool(git("status", "--porcelain"))).lower() if commit else "unknown"}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"data": {"name": "x"}} -> {"data.name": "x"}: the resolved config as MLflow params."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_config(cfg: DictConfig) -> None:
    """The resolved config as flattened params (less train.resume) and as config.yaml. A resumed
    run keeps the params it has, as MLflow cannot change one: only keys of HOW_IT_RUNS can differ
    (the config hash leaves them out; e.g. the thread counts on another node), and config.yaml is
    the newest."""
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params.pop("train.resume")
    logged = mlflow.active_run().data.params
    mlflow.log_params({key: value for key, value in params.items() if key not in logged})
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def set_tags(tags: dict[str, str]) -> None:
    """Tags of the active run known only once it has started (e.g. the data's)."""
    mlflow.set_tags(tags)


def log_epoch(epoch: int, logs: dict[str, float]) -> None:
    """One MLflow call per epoch; step = epoch number, counted from 1 as Keras prints it. Stops
    training here if a signal arrived whose KeyboardInterrupt was swallowed."""
    mlflow.log_metrics({key: float(value) for key, value in logs.items()}, step=epoch + 1)
    _check_interrupt()


def log_metrics(metrics: dict[str, float]) -> None:
    """Final (step-less) metrics of the active run."""
    mlflow.log_metrics(metrics)


def log_predictions(labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Each test image's label and probability, so curves can be redrawn from the store later."""
    log_lines(["label,probability"] + [f"{label},{p:.8f}" for label, p in
                                       zip(labels, probabilities, strict=True)], "test_predictions.csv")


def log_lines(lines: list[str], path: str) -> None:
    """A text artifact of the active run, one line each."""
    mlflow.log_text("".join(f"{line}\n" for line in lines), path)


def log_figure(figure: Figure, name: str) -> None:
    """The figure as plots/NAME.png of the active run; closed after, so figures do not pile up."""
    mlflow.log_figure(figure, f"plots/{name}.png")
    plt.close(figure)


def _requirement(*names: str) -> list[str]:
    """The first installed distribution of `names`, pinned (TensorFlow ships as several)."""
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            return [f"{name}=={version(name)}"]
    return []


def log_model(model: keras.Model, example: np.ndarray, predictions: np.ndarray) -> None:
    """The trained Keras model with a signature inferred from one input `example` and the model's
    own `predictions` for it; mlflow.tensorflow.load_model gives it back. (mlflow.keras.log_model
    3.17 fails to save an input example.) No input example is stored: MLflow would reload the model
    to score it, ~2 s of a run for nothing the tests don't already check."""
    import keras

    requirements = [f"keras=={keras.__version__}",
                    *_requirement("tensorflow", "tensorflow-cpu", "tensorflow-macos")]
    mlflow.tensorflow.log_model(model, name="model",
                                signature=mlflow.models.infer_signature(example, predictions),
                                pip_requirements=requirements)
