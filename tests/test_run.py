"""End-to-end: the real config, shrunk, trains and lands in a fresh MLflow store we read back."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pneumo_exp import data
from pneumo_exp.evaluation.measure import binary_metrics
from pneumo_exp.report.runs import load_predictions
from pneumo_exp.run import run_experiment
from pneumo_exp.tracking import reading
from tests.helpers import (
    LEAN_TRACKING,
    PROJECT,
    QUIET,
    REAL_KAGGLE,
    TINY,
    artifact_paths,
    logged_predictions,
    make_config,
    metrics_of,
    needs_real_kaggle,
    runs_in,
    store_overrides,
)

EPOCH_METRICS = {f"{prefix}{name}" for prefix in ("", "val_")
                 for name in ("loss", "accuracy", "precision", "recall", "auc")} | {
    "epoch_seconds", "train_seconds"}
THRESHOLDED = ("accuracy", "precision", "recall", "specificity", "f1")
TEST_METRICS = {f"{prefix}{name}" for prefix in ("test_", "final_val_")
                for name in ("loss", "auc", "pr_auc", "brier", *THRESHOLDED)} | {
    f"test_{name}_at_0.5" for name in THRESHOLDED} | {"threshold"}
PLOTS = {f"plots/{name}.png" for name in (
    "train_batch", "learning_curves", "confusion_matrix", "roc_curve", "pr_curve", "reliability",
    "gradcam")}
RECIPES = sorted(path.stem for path in (PROJECT / "conf" / "experiment").glob("*.yaml"))
# The best_cpu recipes build the larger networks (20 s a step on 2 cores): `-m slow` runs them.
RECIPE_PARAMS = [pytest.param(r, marks=pytest.mark.slow) if r.startswith("best_cpu") else r for r in RECIPES]


def only_run(cfg):
    """The single run of the store in cfg, read back through MLflow's client."""
    runs = runs_in(cfg.tracking.uri, cfg.tracking.experiment)
    assert len(runs) == 1
    return runs[0]


def check_run_record(run, cfg, overrides):
    """What every FINISHED run records: its choices, command, provenance, params, epoch and final
    metrics (one epoch: step 1), its config and its test predictions."""
    assert run.info.status == "FINISHED"
    for group in ("data", "model", "regularization", "imbalance"):
        assert run.data.tags[group] == cfg[group].name
    assert run.data.tags["overrides"] == " ".join(overrides)
    assert {"git_commit", "git_dirty", "data_fingerprint", "test_split", "n_train_normal",
            "n_test_pneumonia", "data_cache", "config_hash"} <= set(run.data.tags)
    assert run.data.params["data.image_size"] == "32"
    assert run.data.params["imbalance.name"] == cfg.imbalance.name
    assert set(metrics_of(run)) >= EPOCH_METRICS | TEST_METRICS
    # Stored in sections, which MLflow's chart view shows first (tracking/names.py); the curves flat.
    assert {"test/auc", "test/accuracy_at_0.5", "val/auc", "val_auc", "threshold"} <= set(run.data.metrics)
    assert not {"test_auc", "final_val_auc"} & set(run.data.metrics)
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1]
    assert {"config.yaml", "test_predictions.csv"} <= artifact_paths(run.info.run_id)


@pytest.mark.xdist_group("logged_run")
def test_a_full_run_logs_every_artifact(logged_run):
    runs = runs_in(logged_run.uri)
    assert len(runs) == 1
    run = runs[0]
    check_run_record(run, logged_run.cfg, logged_run.overrides)
    logged = artifact_paths(run.info.run_id)
    assert PLOTS | {"plots/learning_curves_member2.png", "data/skipped_files.txt"} <= logged
    assert metrics_of(run)["test_auc"] == pytest.approx(logged_run.scores["test_auc"])
    assert metrics_of(run)["epochs_trained"] == 2  # one epoch for each of the two members
    for metric in ("auc", "recall", "specificity", "accuracy"):  # the test score's own uncertainty
        m = metrics_of(run)
        assert m[f"test_{metric}_ci_low"] <= m[f"test_{metric}"] <= m[f"test_{metric}_ci_high"], metric
    assert run.data.tags["test_ci"].endswith("(unit: image)")  # MedMNIST names no patients


@pytest.mark.xdist_group("logged_run")
def test_each_split_is_logged_as_an_mlflow_dataset_of_a_model_training_experiment(logged_run):
    (run,) = runs_in(logged_run.uri)
    inputs = {tag.value: item.dataset for item in run.inputs.dataset_inputs for tag in item.tags
              if tag.key == "mlflow.data.context"}
    assert sorted(inputs) == ["test", "training", "validation"]
    assert [inputs[c].name for c in ("training", "validation", "test")] == [
        "pneumoniamnist-train", "pneumoniamnist-val", "pneumoniamnist-test"]
    assert len({d.digest for d in inputs.values()}) == 3  # each split its own content
    assert all(str(logged_run.cfg.data.path) in d.source for d in inputs.values())
    assert json.loads(inputs["test"].profile)["targets_shape"] == [16]  # tiny_npz: 16 test images
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's runs view


@pytest.mark.xdist_group("logged_run")
def test_an_npz_run_says_its_patients_are_unknown(logged_run):
    (run,) = runs_in(logged_run.uri)
    assert run.data.tags["test_split"] == "official"
    # MedMNIST publishes no patient ids: the run says so instead of logging an unchecked 0
    assert run.data.tags["patient_disjoint"] == "unknown"
    assert not any(key.startswith("patients_shared") for key in metrics_of(run))


@pytest.mark.xdist_group("logged_run")
def test_each_test_image_is_logged_with_its_decision_and_error_also_as_a_table(logged_run):
    (run,) = runs_in(logged_run.uri)
    rows = logged_predictions(run)  # its columns, and decisions and errors as the threshold makes them
    assert [row["image"] for row in rows] == [f"test_images[{i}]" for i in range(16)]  # the npz's rows
    assert {(row["patient"], row["subtype"]) for row in rows} == {("", "")}  # MedMNIST names neither
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/tables/test_predictions.json"))
    assert table["columns"] == list(rows[0]) and table["data"] == [
        [r["image"], r["patient"], r["subtype"], int(r["label"]), float(r["probability"]), int(r["decision"]),
         r["error"]] for r in rows]
    tables = json.loads(run.data.tags["mlflow.loggedArtifacts"])  # what the UI shows as tables
    assert {"path": "tables/test_predictions.json", "type": "table"} in tables


@pytest.mark.xdist_group("logged_run")
def test_logged_model_loads_back_and_reproduces_the_test_metrics(logged_run):
    run = mlflow.get_run(logged_run.run_id)
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                            filter_string=f"source_run_id = '{run.info.run_id}'")
    assert logged.name == run.info.run_name.replace(".", "_")  # MLflow's Models page tells them apart
    model = reading.load_model(f"runs:/{logged_run.run_id}/model")  # the URI docs and messages use
    for loaded, original in zip(model.get_weights(), logged_run.model.get_weights(), strict=True):
        assert np.array_equal(loaded, original)

    test = data.load(logged_run.cfg.data).test
    pixels = np.repeat(test.images, 3, axis=-1).astype("float32")
    probabilities = model.predict(pixels, verbose=0).reshape(-1)
    logged_labels, logged_probabilities = load_predictions(logged_run.run_id).T
    assert np.array_equal(logged_labels, test.labels)
    assert np.allclose(probabilities, logged_probabilities, atol=1e-6)
    again = binary_metrics(test.labels, probabilities, metrics_of(run)["threshold"])
    for name in ("auc", "accuracy", "recall", "specificity", "brier"):
        assert again[name] == pytest.approx(logged_run.scores[f"test_{name}"], abs=1e-6)
    at_half = binary_metrics(test.labels, probabilities)
    for name in ("accuracy", "recall", "specificity"):
        assert at_half[name] == pytest.approx(metrics_of(run)[f"test_{name}_at_0.5"], abs=1e-6)
    info = mlflow.models.get_model_info(reading.loadable(f"runs:/{logged_run.run_id}/model"))
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]


def test_a_kaggle_layout_run_is_patient_disjoint_and_skips_what_it_is_told_to(kaggle_root, store):
    overrides = ["data=chest_xray", f"data.root={kaggle_root}", "imbalance=oversample", *QUIET, *store]
    cfg = make_config(overrides)
    scores = run_experiment(cfg, overrides).scores
    run = only_run(cfg)
    check_run_record(run, cfg, overrides)
    assert run.data.tags["test_split"] == "held_out_from_train"
    assert metrics_of(run)["patients_shared_train_val"] == 0
    assert metrics_of(run)["patients_shared_train_test"] == 0
    assert run.data.tags["patient_disjoint"] == "true"
    assert metrics_of(run)["test_auc"] == pytest.approx(scores["test_auc"])
    # where it fails: the file names say bacterial pneumonia (helpers.write_kaggle_layout)
    m, pneumonia = metrics_of(run), int(run.data.tags["n_test_pneumonia"])
    assert m["test_n_bacteria"] == pneumonia and "test_recall_virus" not in m
    assert m["test_recall_bacteria"] == pytest.approx(m["test_recall"])  # all pneumonia is bacterial
    assert m["test_tp"] + m["test_fn"] == pneumonia and 0 <= m["test_ece"] <= 1
    assert run.data.tags["test_ci"].endswith("(unit: patient)")
    for row in logged_predictions(run):  # each test image traced to its file, patient and subtype
        assert (kaggle_root / row["image"]).is_file() and row["patient"] and row["patient"] in row["image"]
        assert row["subtype"] == ("bacteria" if row["label"] == "1" else "")
    # tracking.log_figures=false and tracking.log_model=false: no figure, no model
    assert not any(path.startswith(("plots/", "model/")) for path in artifact_paths(run.info.run_id))


@pytest.mark.long
@pytest.mark.parametrize("recipe", RECIPE_PARAMS)
def test_every_recipe_runs_for_one_short_step(recipe, kaggle_root, npz_overrides, store):
    chosen = make_config([f"+experiment={recipe}"])
    source = [f"data.root={kaggle_root}"] if chosen.data.name == "chest_xray" else npz_overrides[1:]
    cfg = make_config([f"+experiment={recipe}", *source, *QUIET, *store])
    result = run_experiment(cfg)
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model"] == chosen.model.name
    assert metrics_of(run)["epochs_trained"] == chosen.train.members  # one epoch each


@pytest.mark.parametrize("stage", ["pneumo_exp.data.load", "pneumo_exp.models.build"])
@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_crashed_or_interrupted_run_does_not_stay_running(stage, error, status, npz_overrides, store,
                                                          monkeypatch):
    """Also while the data loads: a sweep counts its failed jobs from these runs."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(stage, fail)
    cfg = make_config([*npz_overrides, *QUIET, *store])
    with pytest.raises(type(error)):
        run_experiment(cfg)
    run = only_run(cfg)
    assert run.info.status == status
    assert "config.yaml" in artifact_paths(run.info.run_id)  # what was logged before stays
    if status == "FAILED":
        assert run.data.tags["error"] == "RuntimeError: boom"


@pytest.mark.slow
@needs_real_kaggle
@pytest.mark.long
def test_real_kermany_run_end_to_end(store):
    overrides = ["data=chest_xray", f"data.root={REAL_KAGGLE}", "data.image_size=64",
                 "train.epochs=1", *LEAN_TRACKING, *store]
    cfg = make_config(overrides)
    scores = run_experiment(cfg, overrides).scores
    run = only_run(cfg)
    assert run.info.status == "FINISHED"
    assert metrics_of(run)["patients_shared_train_val"] == 0
    assert scores["test_auc"] > 0.7  # one epoch on real X-rays already separates the classes


@pytest.mark.slow
@pytest.mark.long
def test_same_config_and_seed_give_the_same_test_metrics(npz_overrides, tmp_path: Path):
    def scores(seed: int, store: str) -> dict[str, float]:
        overrides = [*npz_overrides, *QUIET, "train.epochs=2", "imbalance=oversample", "augment=xray",
                     "augment.mixup=0.2", f"seed={seed}", *store_overrides(tmp_path, store)]
        return run_experiment(make_config(overrides)).scores

    first, second = scores(0, "a"), scores(0, "b")
    for name, value in first.items():
        assert second[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
    assert scores(1, "c")["test_loss"] != pytest.approx(first["test_loss"], abs=1e-6)  # seeds matter


@pytest.mark.slow
@pytest.mark.long
def test_a_bfloat16_run_computes_in_bfloat16_end_to_end(npz_overrides, store, short_tent):
    """train.precision=mixed_bfloat16 through every stage that touches the model: training, AdaBN,
    Tent (in TENT_STEPS steps), Grad-CAM, the logged model; probabilities stay float32."""
    import keras

    cfg = make_config([*npz_overrides, *TINY, "train.precision=mixed_bfloat16", "eval.adapt=all",
                       "eval.min_images=2", "eval.alpha=0.001", *store])
    try:
        result = run_experiment(cfg)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # the policy is global: later tests get float32
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED" and {"test_bn_auc", "test_tent_auc"} <= set(metrics_of(run))
    assert any(path.startswith("plots/gradcam") for path in artifact_paths(run.info.run_id))
    model = reading.load_model(f"runs:/{result.run_id}/model")
    assert {layer.compute_dtype for layer in model.layers[1:-1]} == {"bfloat16"}
    assert model.layers[-1].compute_dtype == "float32" and model.output.dtype == "float32"
