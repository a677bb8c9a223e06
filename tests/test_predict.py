"""`python -m pneumo_exp.predict`: a logged model scores image files and folders. The model is
conftest's `logged_run`: a test-time-augmented ensemble of two networks trained on the tiny npz."""

import csv
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from pneumo_exp import data, predict
from pneumo_exp.evaluation import explain
from tests.helpers import xray


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
    threshold = mlflow.get_run(run_id).data.metrics["threshold"]
    model = mlflow.tensorflow.load_model(f"runs:/{run_id}/model")
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
    logged = np.loadtxt(mlflow.artifacts.load_text(f"runs:/{run_id}/test_predictions.csv").splitlines(),
                        delimiter=",", skiprows=1)[:, 1]
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
