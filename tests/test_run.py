"""End-to-end: the real config, shrunk, trains and lands in a fresh MLflow store we read back."""

import subprocess
import sys

import mlflow
import numpy as np
import pytest
from conftest import REAL_KAGGLE, TINY, make_config, needs_real_kaggle

from pneumo_exp import data, tracking
from pneumo_exp.run import run_experiment
from pneumo_exp.train import binary_metrics

EPOCH_METRICS = {f"{prefix}{name}" for prefix in ("", "val_")
                 for name in ("loss", "accuracy", "precision", "recall", "auc")} | {"epoch_seconds"}
THRESHOLDED = ("accuracy", "precision", "recall", "specificity", "f1")
TEST_METRICS = {f"{prefix}{name}" for prefix in ("test_", "final_val_")
                for name in ("loss", "auc", "pr_auc", "brier", *THRESHOLDED)} | {
    f"test_{name}_at_0.5" for name in THRESHOLDED} | {"threshold"}
PLOTS = {f"plots/{name}.png" for name in (
    "train_batch", "learning_curves", "confusion_matrix", "roc_curve", "pr_curve", "reliability",
    "gradcam")}


def only_run(cfg):
    """The single run of the store in cfg, read back through MLflow's client."""
    mlflow.set_tracking_uri(tracking.store_uri(cfg.tracking.uri))
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert len(runs) == 1
    return runs[0]


def artifact_paths(run_id, path=""):
    paths = set()
    for item in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=path or None):
        paths |= artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return paths


def check_logged_run(cfg, overrides):
    run = only_run(cfg)
    assert run.info.status == "FINISHED"
    for group in ("data", "model", "regularization", "imbalance"):
        assert run.data.tags[group] == cfg[group].name
    assert run.data.tags["overrides"] == " ".join(overrides)
    assert {"git_commit", "git_dirty", "data_fingerprint", "test_split", "n_train_normal",
            "n_test_pneumonia", "data_cache", "config_hash"} <= set(run.data.tags)
    assert run.data.params["data.image_size"] == "32"
    assert run.data.params["imbalance.name"] == cfg.imbalance.name
    assert set(run.data.metrics) >= EPOCH_METRICS | TEST_METRICS
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1]
    assert PLOTS | {"config.yaml", "test_predictions.csv"} <= artifact_paths(run.info.run_id)
    return run


@pytest.mark.parametrize("imbalance", ["none", "class_weight", "focal", "oversample"])
def test_each_imbalance_method_trains_and_logs_on_kaggle_layout(imbalance, kaggle_root, store):
    overrides = ["data=chest_xray", f"data.root={kaggle_root}", f"imbalance={imbalance}",
                 *TINY, *store]
    cfg = make_config(overrides)
    scores = run_experiment(cfg, overrides).scores
    run = check_logged_run(cfg, overrides)
    assert run.data.tags["test_split"] == "held_out_from_train"
    assert run.data.metrics["patients_shared_train_val"] == 0
    assert run.data.metrics["patients_shared_train_test"] == 0
    assert run.data.tags["patient_disjoint"] == "true"
    assert run.data.metrics["test_auc"] == pytest.approx(scores["test_auc"])


@pytest.mark.parametrize("regularization", ["bn_only", "dropout_only", "none"])
def test_each_regularization_trains_and_logs_on_npz(regularization, npz_overrides, store):
    overrides = [*npz_overrides, f"regularization={regularization}", *TINY, *store]
    cfg = make_config(overrides)
    run_experiment(cfg, overrides)
    run = check_logged_run(cfg, overrides)
    assert run.data.tags["test_split"] == "official"
    # MedMNIST publishes no patient ids: the run says so instead of logging an unchecked 0
    assert run.data.tags["patient_disjoint"] == "unknown"
    assert not any(key.startswith("patients_shared") for key in run.data.metrics)


def test_logged_model_loads_back_and_reproduces_the_test_metrics(npz_overrides, store,
                                                                  monkeypatch):
    trained = {}

    def keep_and_log(model, example, predictions):
        trained["model"] = model
        log_model(model, example, predictions)

    log_model = tracking.log_model
    monkeypatch.setattr(tracking, "log_model", keep_and_log)
    overrides = [*npz_overrides, *TINY, *store]
    cfg = make_config(overrides)
    scores = run_experiment(cfg, overrides).scores
    run = only_run(cfg)
    model = mlflow.tensorflow.load_model(f"runs:/{run.info.run_id}/model")
    for loaded, original in zip(model.get_weights(), trained["model"].get_weights(), strict=True):
        assert np.array_equal(loaded, original)

    test = data.load(cfg.data).test
    pixels = np.repeat(test.images, 3, axis=-1).astype("float32")
    probabilities = model.predict(pixels, verbose=0).reshape(-1)
    logged_csv = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/test_predictions.csv")
    logged_labels, logged_probabilities = np.loadtxt(logged_csv.splitlines(), delimiter=",",
                                                     skiprows=1, unpack=True)
    assert np.array_equal(logged_labels, test.labels)
    assert np.allclose(probabilities, logged_probabilities, atol=1e-6)
    again = binary_metrics(test.labels, probabilities, run.data.metrics["threshold"])
    for name in ("auc", "accuracy", "recall", "specificity", "brier"):
        assert again[name] == pytest.approx(scores[f"test_{name}"], abs=1e-6)
    at_half = binary_metrics(test.labels, probabilities)
    for name in ("accuracy", "recall", "specificity"):
        assert at_half[name] == pytest.approx(run.data.metrics[f"test_{name}_at_0.5"], abs=1e-6)
    logged = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert list(logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]


@pytest.mark.parametrize("stage", ["pneumo_exp.data.load", "pneumo_exp.models.build"])
@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_crashed_or_interrupted_run_does_not_stay_running(stage, error, status, npz_overrides, store,
                                                          monkeypatch):
    """Also while the data loads: a sweep counts its failed jobs from these runs."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(stage, fail)
    cfg = make_config([*npz_overrides, *TINY, *store])
    with pytest.raises(type(error)):
        run_experiment(cfg)
    run = only_run(cfg)
    assert run.info.status == status
    assert "config.yaml" in artifact_paths(run.info.run_id)  # what was logged before stays
    if status == "FAILED":
        assert run.data.tags["error"] == "RuntimeError: boom"


def test_cli_multirun_gives_two_finished_runs(tmp_path, tiny_npz):
    path, md5 = tiny_npz
    result = subprocess.run(
        [sys.executable, "-m", "pneumo_exp", "-m", "imbalance=focal,class_weight",
         f"data.path={path}", f"data.md5={md5}", *TINY,
         f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
         f"tracking.artifact_location={tmp_path}/artifacts", f"hydra.sweep.dir={tmp_path}/multirun"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("open the MLflow UI: mlflow ui --backend-store-uri sqlite:") == 2
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["pneumo_exp"], output_format="list")
    children = [r for r in runs if r.data.tags["sweep_role"] == "child"]
    assert sorted(r.data.tags["imbalance"] for r in children) == ["class_weight", "focal"]
    assert {r.info.status for r in runs} == {"FINISHED"}  # the two runs and the sweep's parent


@pytest.mark.slow
@needs_real_kaggle
def test_real_kermany_run_end_to_end(store):
    overrides = ["data=chest_xray", f"data.root={REAL_KAGGLE}", "data.image_size=64",
                 "train.epochs=1", *store]
    cfg = make_config(overrides)
    scores = run_experiment(cfg, overrides).scores
    run = only_run(cfg)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["patients_shared_train_val"] == 0
    assert scores["test_auc"] > 0.7  # one epoch on real X-rays already separates the classes


def test_same_config_and_seed_give_the_same_test_metrics(npz_overrides, tmp_path):
    def scores(seed: int, store: str) -> dict[str, float]:
        overrides = [*npz_overrides, *TINY, "train.epochs=2", "imbalance=oversample", "augment=xray",
                     "augment.mixup=0.2", f"seed={seed}",
                     f"tracking.uri=sqlite:///{tmp_path}/{store}.db",
                     f"tracking.artifact_location={tmp_path}/{store}"]
        return run_experiment(make_config(overrides)).scores

    first, second = scores(0, "a"), scores(0, "b")
    for name, value in first.items():
        assert second[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
    assert scores(1, "c")["test_loss"] != pytest.approx(first["test_loss"], abs=1e-6)  # seeds matter
