"""`python -m pneumo_exp.predict`: a logged model scores image files and folders. The model is
conftest's `logged_run`: a test-time-augmented ensemble of two networks trained on the tiny npz."""

import csv
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from pneumo_exp import data, predict
from pneumo_exp.evaluation import explain
from pneumo_exp.report.runs import load_predictions
from pneumo_exp.tracking import reading
from tests.helpers import empty_store, metrics_of, xray


@pytest.mark.xdist_group("logged_run")
def test_predict_scores_a_folder_at_the_runs_threshold(logged_run, tmp_path, capsys):
    run_id, uri = logged_run.run_id, logged_run.uri
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(5):
        xray(i % 2, rng, 100).save(folder / ("sub" if i % 2 else "") / f"x{i // 2}.jpeg")  # x0, sub/x0, …
    (folder / "broken.jpeg").write_bytes(b"<html>not an image</html>")
    predict.main([f"runs:/{run_id}/model", str(folder), "--out", str(tmp_path / "p.csv"),
                  "--gradcam", str(tmp_path / "cam"), "--tracking-uri", uri])
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 5 and "broken.jpeg: cannot decode" in capsys.readouterr().err

    mlflow.set_tracking_uri(uri)
    threshold = metrics_of(mlflow.get_run(run_id))["threshold"]
    model = reading.load_model(f"runs:/{run_id}/model")
    assert model.name == "resnet_small_x2_tta"  # the logged model scores as the run did: the mean of its
    # two networks, with TTA, and --gradcam looks into the networks inside
    assert [network.name for network in explain.networks(model)] == ["resnet_small", "resnet_small_2"]
    files = [Path(row["file"]) for row in rows]
    images, _, _, _ = data.decode(files, 32, source_size=28)
    expected = model.predict(np.repeat(images, 3, -1).astype("float32"), verbose=0).reshape(-1)
    for row, p in zip(rows, expected, strict=True):
        assert float(row["probability"]) == pytest.approx(p, abs=1e-5)
        assert row["label"] == ("PNEUMONIA" if p >= threshold else "NORMAL")
    assert len(list((tmp_path / "cam").glob("*.png"))) == 5


@pytest.mark.xdist_group("logged_run")
def test_predict_reproduces_the_runs_own_test_scores_from_image_files(logged_run, tiny_npz, tmp_path):
    # the npz's test images as files a user might have: wider than tall (predict keeps the centre
    # square, as MedMNIST did), PNG; the TTA ensemble must score them as the run scored its test split
    run_id, uri = logged_run.run_id, logged_run.uri
    with np.load(tiny_npz[0]) as npz:
        images = npz["test_images"]
    rng = np.random.default_rng(4)
    for i, image in enumerate(images):
        sides = rng.integers(0, 256, (28, 6), dtype=np.uint8)
        Image.fromarray(np.hstack([sides, image, sides])).save(tmp_path / f"test{i:02d}.png")
    predict.main([f"runs:/{run_id}/model", str(tmp_path), "--out", str(tmp_path / "p.csv"),
                  "--tracking-uri", uri])
    scored = [float(row["probability"]) for row in csv.DictReader((tmp_path / "p.csv").open())]
    mlflow.set_tracking_uri(uri)
    logged = load_predictions(run_id)[:, 1]
    assert np.ptp(logged) > 0.01  # the images score differently, so a mismatch would show
    assert np.allclose(scored, logged, atol=1e-5)


@pytest.mark.xdist_group("logged_run")
def test_predict_bad_path_or_model_is_one_line(logged_run, tmp_path, capsys):
    run_id, uri = logged_run.run_id, logged_run.uri
    with pytest.raises(SystemExit, match="2"):
        predict.main([f"runs:/{run_id}/model", str(tmp_path / "missing"), "--tracking-uri", uri])
    assert capsys.readouterr().err == (f"error: {tmp_path / 'missing'} does not exist: "
                                       "pass image files or folders of images\n")
    image = tmp_path / "a.png"
    xray(1, np.random.default_rng(0)).save(image)
    with pytest.raises(SystemExit, match="2"):
        predict.main(["runs:/0123456789abcdef/model", str(image), "--tracking-uri", uri])
    assert capsys.readouterr().err.startswith("error: cannot load runs:/0123456789abcdef/model")
    image.write_bytes(b"<html>not an image</html>")
    with pytest.raises(SystemExit, match="2"):
        predict.main([f"runs:/{run_id}/model", str(image), "--tracking-uri", uri])
    assert capsys.readouterr().err.endswith(
        "error: none of the 1 files is an image that decodes (see above): pass chest X-ray images\n")


NO_MODEL, NO_STORE = "runs:/0123456789abcdef/model", "sqlite:///{tmp}/none.db"


@pytest.mark.parametrize("args, line", [
    # no model, no store and no images either: the output paths are checked before any of them
    pytest.param(["{tmp}/missing", "--out", "/nonexistent/p.csv"],
                 "error: --out /nonexistent/p.csv: /nonexistent is not a folder: make it first, or pass a "
                 "CSV path in an existing folder", id="out in a missing folder"),
    pytest.param(["{tmp}/missing", "--out", "{tmp}"],
                 "error: --out {tmp} is a folder: pass the CSV file to write, e.g. --out "
                 "{tmp}/predictions.csv", id="out is a folder"),
    pytest.param(["{tmp}/missing", "--out", "{tmp}/file/p.csv"],
                 "error: --out {tmp}/file/p.csv: {tmp}/file is not a folder: make it first",
                 id="out below a file"),
    pytest.param(["{tmp}/missing", "--gradcam", "{tmp}/file"],
                 "error: --gradcam {tmp}/file: {tmp}/file is a file: pass a folder for the overlays (made if "
                 "missing)", id="gradcam is a file"),
    pytest.param(["{tmp}/missing", "--gradcam", "{tmp}/file/cams"],
                 "error: --gradcam {tmp}/file/cams: {tmp}/file is a file: pass a folder",
                 id="gradcam below a file"),
    # an input or a file predict did not write is never replaced (checked before the model loads)
    pytest.param(["{tmp}/a.png", "--out", "{tmp}/a.png"],
                 "error: --out {tmp}/a.png is one of the images to score: pass a new CSV path",
                 id="out is an input image"),
    pytest.param(["{tmp}/a.png", "--out", "{tmp}/file"],
                 "error: --out {tmp}/file exists and is not a CSV that predict wrote: pass a new path",
                 id="out is a file predict did not write"),
    # no model either: the store is checked before the model is looked for
    pytest.param(["{tmp}/a.png"], "error: no MLflow store at {tmp}/none.db: pass --tracking-uri",
                 id="no store"),
    pytest.param(["{tmp}/a.png", "--tracking-uri", "sqlit:///x.db"],
                 "error: tracking URI 'sqlit:///x.db' has the unknown scheme 'sqlit': use", id="bad scheme"),
    pytest.param(["{tmp}/a.png", "--tracking-uri", "sqlite:///{tmp}/garbage.db"],
                 "error: {tmp}/garbage.db is not a readable SQLite database (file is not a database)",
                 id="corrupt store"),
])
def test_bad_output_path_or_store_fails_before_the_model_loads(tmp_path, capsys, args, line):
    xray(1, np.random.default_rng(0)).save(tmp_path / "a.png")
    (tmp_path / "garbage.db").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "file").write_text("not a folder")
    images, *options = (arg.format(tmp=tmp_path) for arg in args)
    defaults = ["--tracking-uri", NO_STORE.format(tmp=tmp_path), "--out", str(tmp_path / "p.csv")]
    with pytest.raises(SystemExit, match="2"):
        predict.main([NO_MODEL, images, *defaults, *options])  # of an option given twice, the last wins
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(line.format(tmp=tmp_path)) and "Traceback" not in err
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "p.csv").exists()
    assert (tmp_path / "file").read_text() == "not a folder" and Image.open(tmp_path / "a.png").size


def stored_run(tmp_path: Path, state: str, tags: dict[str, str] | None = None,
               params: dict[str, str] | None = None) -> str:
    """A run with a threshold and no model, made straight in a fresh store at tmp_path/mlflow.db and
    left in `state` (a status, or FINISHED then deleted: `delete_run`, `delete_experiment`): what
    predict reads about a run before it loads the model."""
    shutil.copy(empty_store(), tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("pneumo_exp", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment_id, tags=tags or {}).info.run_id
    client.log_metric(run_id, "threshold", 0.5)
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    if state != "RUNNING":
        client.set_terminated(run_id, state if state.isupper() else "FINISHED")
    if state == "delete_run":
        client.delete_run(run_id)
    if state == "delete_experiment":
        client.delete_experiment(experiment_id)
    return run_id


RESTORE = "restore it with `MLFLOW_TRACKING_URI=sqlite:///{tmp}/mlflow.db mlflow"
MODEL = "runs:/{run}/model"


@pytest.mark.parametrize("state, tags, params, uri, line", [
    *[pytest.param(status, None, None, MODEL,
                   f"error: run {{run}} is {status}, not FINISHED: its model is missing or not to be "
                   "trusted; pass the runs:/RUN_ID/model of a FINISHED run (`mlflow ui` lists each run's "
                   "status)", id=status) for status in ("FAILED", "KILLED", "RUNNING")],
    pytest.param("FINISHED", {"sweep_role": "parent", "sweep_id": "s1"}, None, MODEL,
                 "error: run {run} is the parent run of sweep s1, which trains no model: pass one of its "
                 "runs' runs:/RUN_ID/model, or the sweep id for a cross-validated sweep", id="parent"),
    pytest.param("FINISHED", {"sweep_role": "child", "sweep_id": "s1"}, None, "{run}",
                 "error: {run} is the id of a run, not of a sweep: pass its model, runs:/{run}/model",
                 id="bare run id"),
    pytest.param("FINISHED", None, {"tracking.log_model": "False"}, MODEL,
                 "error: run {run} logged no model (tracking.log_model=false): pass another run's "
                 "runs:/RUN_ID/model, or train again with tracking.log_model=true", id="no model logged"),
    pytest.param("delete_run", None, None, MODEL,
                 f"error: run {{run}} was deleted: {RESTORE} runs restore --run-id {{run}}`, or pass another "
                 "run's runs:/RUN_ID/model", id="deleted run"),
    pytest.param("delete_experiment", None, None, MODEL,
                 f"error: experiment 'pneumo_exp' was deleted: {RESTORE} experiments restore --experiment-id "
                 "1`, or pass the model of a run in another experiment", id="deleted experiment"),
])
def test_a_run_whose_model_cannot_be_trusted_is_refused_saying_why(tmp_path, capsys, state, tags, params,
                                                                   uri, line):
    """Before the model loads: a FAILED run may have logged half a model, and MLflow's own error
    (no MLmodel file) names neither the run's status nor what to pass."""
    run_id = stored_run(tmp_path, state, tags, params)
    xray(1, np.random.default_rng(0)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match="2"):
        predict.main([uri.format(run=run_id), str(tmp_path / "a.png"), "--out", str(tmp_path / "p.csv"),
                      "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == line.format(run=run_id, tmp=tmp_path) and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("method", ["prior", "tent"])
def test_adapting_to_fewer_images_than_the_run_adapts_is_refused_before_the_model_loads(tmp_path, capsys,
                                                                                        method):
    run_id = stored_run(tmp_path, "FINISHED", params={"eval.min_images": "50"})  # no model: none loads
    xray(1, np.random.default_rng(0)).save(tmp_path / "one.png")
    with pytest.raises(SystemExit, match="2"):
        predict.main([f"runs:/{run_id}/model", str(tmp_path / "one.png"), "--adapt", method, "--out",
                      str(tmp_path / "p.csv"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --adapt {method} adapts to a set of images and got 1 image, fewer than the 50 it needs (the "
        "run's eval.min_images): drop --adapt, or pass more images of the same site")


@pytest.mark.xdist_group("logged_run")
def test_adapting_is_refused_where_too_few_of_the_images_decode(logged_run, tmp_path, capsys):
    # the run adapts sets of 2 or more (eval.min_images=2): 2 files pass, but only 1 decodes
    xray(1, np.random.default_rng(0)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"<html>not an image</html>")
    with pytest.raises(SystemExit, match="2"):
        predict.main([f"runs:/{logged_run.run_id}/model", str(tmp_path), "--adapt", "bn", "--out",
                      str(tmp_path / "p.csv"), "--tracking-uri", logged_run.uri])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --adapt bn adapts to a set of images and got 1 image, fewer than the 2 it needs (the run's "
        "eval.min_images): drop --adapt, or pass more images of the same site")
    assert not (tmp_path / "p.csv").exists()
