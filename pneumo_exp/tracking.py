"""The MLflow store and what a run logs into it.

It is told what to log; it never reaches back into data or training. How a run ends is
lifecycle.py's; which runs belong to a sweep is sweep.py's.
"""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import UserError, lifecycle

if TYPE_CHECKING:  # TensorFlow loads only where a model is logged
    import keras

SQLITE = "sqlite:///"


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
                        "(see docs/tracking.md) or pass another tracking.uri") from error


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
    lifecycle.end_orphaned_runs()
    return uri


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store, as printed after each run."""
    return f"mlflow ui --backend-store-uri {uri}"


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


def epoch_history(run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """Per-epoch values as logged, in epoch order: the whole curve, also across a resume."""
    client = mlflow.MlflowClient()
    return {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in keys}


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
    lifecycle.check_interrupt()


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
