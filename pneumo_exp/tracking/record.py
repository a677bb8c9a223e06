"""What a run logs into the MLflow store.

It is told what to log; it never reaches back into data or training. Which store, and opening it,
is store.py's; how a run ends is lifecycle.py's; which runs belong to a sweep is sweep.py's.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import re
import subprocess
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import redact
from pneumo_exp.tracking import lifecycle, names

if TYPE_CHECKING:  # TensorFlow loads only where a model is logged
    import keras

    from pneumo_exp.data import Split

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
    mlflow.log_params({key: redact(str(value)) for key, value in params.items() if key not in logged})
    mlflow.log_text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")


def set_tags(tags: dict[str, str]) -> None:
    """Tags of the active run known only once it has started (e.g. the data's)."""
    mlflow.set_tags(tags)


CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's dataset contexts


def log_datasets(splits: dict[str, tuple[np.ndarray, np.ndarray]], name: str, source: str,
                 fingerprint: str) -> None:
    """Each split (images, labels) as an MLflow dataset input, so that the UI's Dataset column and
    dataset filters work. Only its schema, size and digest are stored, not the images. The digest
    names the split's content: the data's fingerprint with which images (by their labels' and
    pixels' hash) the split holds, so that two runs on the same split show the same dataset."""
    for split, (images, labels) in splits.items():
        content = hashlib.sha256(f"{fingerprint}|{split}|{len(labels)}".encode())
        content.update(np.ascontiguousarray(labels).tobytes())
        content.update(np.ascontiguousarray(images[:, ::8, ::8]).tobytes())  # cheap, split-specific
        with warnings.catch_warnings():  # MLflow registers its local source twice, then warns of it
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(images, targets=labels, source=source,
                                             name=f"{name}-{split}", digest=content.hexdigest()[:16])
        log_input(dataset, CONTEXTS[split], {"data_fingerprint": fingerprint})


def log_input(dataset: mlflow.data.Dataset, context: str, tags: dict[str, str]) -> None:
    """mlflow.log_input, once more where a run beside this one registered the same dataset in the
    same instant: the store then refuses the second registration (a UNIQUE constraint on the
    experiment, name and digest), and the retry finds the dataset and only links it to this run."""
    try:
        mlflow.log_input(dataset, context=context, tags=tags)
    except Exception as error:  # MlflowException from a server, SQLAlchemy's from a file
        if "UNIQUE constraint failed: datasets" not in str(error):
            raise
        mlflow.log_input(dataset, context=context, tags=tags)


def log_epoch(epoch: int, logs: dict[str, float]) -> None:
    """One MLflow call per epoch; step = epoch number, counted from 1 as Keras prints it. Validation
    AUC first, then validation's other scores: MLflow's compare view opens on a run's first-logged
    metric. Stops training here if a signal arrived whose KeyboardInterrupt was swallowed."""
    first = sorted(logs, key=lambda key: (key != "val_auc", not key.startswith("val_")))
    mlflow.log_metrics({key: float(logs[key]) for key in first}, step=epoch + 1)
    lifecycle.check_interrupt()


def log_metrics(metrics: dict[str, float]) -> None:
    """Final (step-less) metrics of the active run, under the store's names (names.stored: scores
    in sections, so MLflow's chart view opens on them)."""
    mlflow.log_metrics({names.stored(key): value for key, value in metrics.items()})


ERRORS = {(0, 1): "false positive", (1, 0): "false negative"}  # (label, decision): "" when right


def prediction_columns(split: Split, probabilities: np.ndarray, threshold: float) -> dict[str, list]:
    """Each image of `split` by column: its name (its row where the source names none, as an
    extra set's do), patient and subtype ("" where unknown), label, probability, the decision at the
    run's threshold and what kind of error that decision is, so that an error leads to its image."""
    n, decisions = len(split.labels), (probabilities >= threshold).astype(int).tolist()
    return {"image": [str(name) for name in (range(n) if split.names is None else split.names)],
            "patient": [str(patient) for patient in split.patients],
            "subtype": [""] * n if split.kinds is None else [str(kind) for kind in split.kinds],
            "label": [int(label) for label in split.labels],
            "probability": [round(float(p), 8) for p in probabilities],
            "decision": decisions,
            "error": [ERRORS.get((int(y), d), "") for y, d in zip(split.labels, decisions, strict=True)]}


def log_predictions(split: Split, probabilities: np.ndarray, threshold: float, prefix: str = "test") -> None:
    """Each image of a held-out set (prediction_columns) as PREFIX_predictions.csv (test, extra_NAME),
    so curves can be redrawn and a cross-validated sweep's fold models averaged from the store later,
    and as the MLflow table tables/PREFIX_predictions.json, which the run's Artifacts tab shows sortable."""
    columns = prediction_columns(split, probabilities, threshold)
    written = columns | {"probability": [f"{p:.8f}" for p in columns["probability"]]}
    log_csv(written, f"{prefix}_predictions.csv")
    mlflow.log_table(columns, f"tables/{prefix}_predictions.json")


def log_validation(names: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Each validation image's name, label and probability: a cross-validated sweep's report pools
    them over the folds into out-of-fold predictions, each training image scored once."""
    log_csv({"image": names, "label": labels, "probability": [f"{p:.8f}" for p in probabilities]},
            "val_predictions.csv")


def log_csv(columns: dict[str, Sequence], path: str) -> None:
    """Columns of equal length as a CSV artifact, quoted where a value holds a comma (a file name)."""
    table = io.StringIO()
    rows = csv.writer(table, lineterminator="\n")
    rows.writerow(columns)
    rows.writerows(zip(*columns.values(), strict=True))
    mlflow.log_text(table.getvalue(), path)


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


def model_name(run_name: str) -> str:
    """The run's name as MLflow allows a model's: each of / : . % " ' as _ (`lr=0.001`: lr=0_001)."""
    return re.sub(r"[/:.%\"']", "_", run_name)


def log_model(model: keras.Model, example: np.ndarray, predictions: np.ndarray) -> None:
    """The trained Keras model with a signature inferred from one input `example` and the model's
    own `predictions` for it, named after its run (model_name), so that MLflow's Models page tells
    them apart; tracking/reading.load_model gives it back, from `runs:/RUN_ID/model` too.
    (mlflow.keras.log_model 3.17 fails to save an input example.) No input example is stored: MLflow
    would reload the model to score it, ~2 s of a run for nothing the tests don't already check."""
    import keras

    requirements = [f"keras=={keras.__version__}",
                    *_requirement("tensorflow", "tensorflow-cpu", "tensorflow-macos")]
    mlflow.tensorflow.log_model(model, name=model_name(mlflow.active_run().info.run_name),
                                signature=mlflow.models.infer_signature(example, predictions),
                                pip_requirements=requirements)
