"""What the tests share: the real config, generated images, one CLI runner and one store reader."""

import csv
import functools
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from pneumo_exp.tracking import names

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
REAL_NPZ = SHARED_DATA / "pneumoniamnist" / "pneumoniamnist.npz"
REAL_KAGGLE = SHARED_DATA / "chest_xray_pneumonia_224" / "chest_xray"
REAL_ORIGINALS = SHARED_DATA / "chest_xray_pneumonia_val_original"
# A run shrunk to seconds: 32 px, one epoch of small batches, run eagerly (tracing the training
# graph would take longer than its few steps: tests that check the traced step leave this out).
TINY = ["data.image_size=32", "train.epochs=1", "train.batch_size=8", "train.run_eagerly=true"]
ADMIN = ("admin", "admin-password-0A1")  # of tests/conftest.auth_server
# Without the artifacts a test does not look at (every figure, Grad-CAM among them, and the model).
LEAN_TRACKING = ["tracking.log_figures=false", "tracking.log_model=false"]
QUIET = [*TINY, *LEAN_TRACKING]
# Tent's Adam steps (pneumo_exp/evaluation/tent.py STEPS, 50) in a test that checks where Tent runs and
# what it touches, not how far it gets: each step re-estimates every BatchNorm layer eagerly, so 50
# steps take about 10 s per scored set. Set through the fixture short_tent (conftest.py).
TENT_STEPS = 3

needs_real_npz = pytest.mark.skipif(not REAL_NPZ.is_file(),
                                    reason=f"real data absent: {REAL_NPZ} not found")
needs_real_kaggle = pytest.mark.skipif(not REAL_KAGGLE.is_dir(),
                                       reason=f"real data absent: {REAL_KAGGLE} not found")
needs_real_originals = pytest.mark.skipif(not REAL_ORIGINALS.is_dir(),
                                          reason=f"real data absent: {REAL_ORIGINALS} not found")


def make_config(overrides: list[str]) -> DictConfig:
    """The project's real config, composed as `python -m pneumo_exp OVERRIDES` would."""
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@functools.cache
def empty_store() -> Path:
    """A SQLite file with MLflow's tables made, once per test process (in its own folder, see
    conftest.in_own_folder): creating them takes 2-3 s, copying the file 0.1 s."""
    path = Path.cwd().resolve() / "empty_store" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def store_overrides(folder: Path, name: str = "mlflow") -> list[str]:
    """Overrides that send runs to the SQLite store folder/NAME.db (a copy of empty_store() where it
    does not exist yet), artifacts beside it."""
    db = Path(folder) / f"{name}.db"
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(empty_store(), db)
    return [f"tracking.uri=sqlite:///{folder}/{name}.db",
            f"tracking.artifact_location={folder}/{name}_artifacts"]


def runs_in(uri: str, experiment: str = "pneumo_exp") -> list[mlflow.entities.Run]:
    """Every run of `experiment` in the store at `uri` (a SQLite path is taken as sqlite:///PATH)."""
    mlflow.set_tracking_uri(uri if "://" in str(uri) else f"sqlite:///{uri}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def by_role(runs: list[mlflow.entities.Run]) -> tuple[list[mlflow.entities.Run], list[mlflow.entities.Run]]:
    """(parents, children) of a sweep's runs."""
    return ([r for r in runs if r.data.tags.get("sweep_role") == "parent"],
            [r for r in runs if r.data.tags.get("sweep_role") == "child"])


def artifact_paths(run_id: str, path: str = "") -> set[str]:
    """Every artifact file of the run, as paths below its artifact root."""
    paths = set()
    for item in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=path or None):
        paths |= artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return paths


def metrics_of(run: mlflow.entities.Run) -> dict[str, float]:
    """A run's metrics by the code's names (`test_auc`, not the store's `test/auc`)."""
    return names.metrics_in_code(run.data.metrics)


def logged_predictions(run: mlflow.entities.Run, prefix: str = "test") -> list[dict[str, str]]:
    """The run's PREFIX_predictions.csv, row by row, checked on the way: its columns, and each image's
    decision (probability >= the run's threshold) and error as its label and probability make them."""
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{prefix}_predictions.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["image", "patient", "subtype", "label", "probability", "decision", "error"]
    errors = {("0", 1): "false positive", ("1", 0): "false negative"}
    for row in rows:
        decision = int(float(row["probability"]) >= run.data.metrics["threshold"])
        assert (int(row["decision"]), row["error"]) == (decision, errors.get((row["label"], decision), ""))
    return rows


def cli(*args: str, cwd: Path, module: str = "pneumo_exp", env: dict[str, str] | None = None,
        timeout: int = 900, background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    """`python -m MODULE ARGS` in `cwd`, as a user types it: finished (output captured), or started in
    the background (stdout and stderr together) with background=True."""
    command = [sys.executable, "-m", module, *args]
    full_env = {**os.environ, **(env or {})}
    if background:
        return subprocess.Popen(command, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


HOOKS = """\
import os
import time

if os.environ.get("PNEUMO_EXP_TEST_CRASH"):  # a crash no config check can catch, as a bug would be
    from pneumo_exp import run

    train_model = run.train_model

    def crash_on_seed(cfg, *args, **kwargs):
        if os.environ["PNEUMO_EXP_TEST_CRASH"] in ("*", str(cfg.seed)):
            raise RuntimeError("a crash the test injected")
        return train_model(cfg, *args, **kwargs)

    run.train_model = crash_on_seed

if os.environ.get("PNEUMO_EXP_TEST_PAUSE"):  # a job caught mid-training, however quick its epochs
    from pneumo_exp import run

    train_model = run.train_model

    def pause_after_each_epoch(*args, **kwargs):
        from pneumo_exp.tracking import record

        log_epoch = record.log_epoch

        def log_then_pause(epoch, logs):
            log_epoch(epoch, logs)
            time.sleep(float(os.environ["PNEUMO_EXP_TEST_PAUSE"]))

        record.log_epoch = log_then_pause
        try:
            return train_model(*args, **kwargs)
        finally:
            record.log_epoch = log_epoch

    run.train_model = pause_after_each_epoch
"""


def with_hooks(folder: Path, **variables: str) -> dict[str, str]:
    """Environment for `cli` that sets `variables` and puts a sitecustomize module (HOOKS) in `folder`
    on the path, where they take effect."""
    (folder / "sitecustomize.py").write_text(HOOKS)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
            **variables}


def crashing(folder: Path, seed: str = "*") -> dict[str, str]:
    """Environment for `cli` in which every job of `seed` ("*": every job) crashes as its training
    starts, through a sitecustomize module in `folder` that patches run.train_model."""
    return with_hooks(folder, PNEUMO_EXP_TEST_CRASH=seed)


def pausing(folder: Path, seconds: float) -> dict[str, str]:
    """Environment for `cli` in which every job sleeps `seconds` after it logs each epoch (through a
    sitecustomize module in `folder`): a test can then signal a job that is surely still training."""
    return with_hooks(folder, PNEUMO_EXP_TEST_PAUSE=str(seconds))


def xray(label: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A fake X-ray: pneumonia images carry a bright blob, so a model can learn something."""
    pixels = rng.normal(90, 20, (size, size))
    if label:
        pixels[size // 4: size // 2, size // 4: size // 2] += 100
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_kaggle_layout(root: Path, patients: int = 10, with_test: bool = False) -> Path:
    """root/chest_xray/{train,val[,test]}/{NORMAL,PNEUMONIA}/ with Kermany-style file names."""
    rng = np.random.default_rng(0)
    splits = {"train": range(patients), "val": range(100, 102)}
    if with_test:
        splits["test"] = range(200, 204)
    for split, ids in splits.items():
        for pid in ids:
            for image in range(2):
                normal = root / "chest_xray" / split / "NORMAL" / f"IM-{pid:04d}-{image:04d}.jpeg"
                sick = root / "chest_xray" / split / "PNEUMONIA" / f"person{pid}_bacteria_{image}.jpeg"
                for path, label in ((normal, 0), (sick, 1)):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    xray(label, rng).save(path)
    return root


def chest_data_cfg(root: Path, *extra: str) -> DictConfig:
    """The `data` config of a chest_xray run on `root` at 32 px."""
    return make_config(["data=chest_xray", f"data.root={root}", "data.image_size=32", *extra]).data


def choices(group: str) -> list[str]:
    """The choices of a config group, as conf/GROUP/ holds them: what a test that enumerates them reads."""
    return sorted(path.stem for path in (PROJECT / "conf" / group).glob("*.yaml"))


def choice_keys(group: str, choice: str) -> set[str]:
    """The keys conf/GROUP/CHOICE.yaml sets."""
    return set(OmegaConf.load(PROJECT / "conf" / group / f"{choice}.yaml"))


def held_out_scored(cfg, net, data, threshold: float, val_p):
    """scoring.score_held_out at `threshold` after validation's probabilities `val_p`, under
    imbalance=none's plan: the Assessment, its metrics and tags filled in."""
    from pneumo_exp.evaluation import scoring
    from pneumo_exp.models import imbalance

    found = scoring.Assessment({"val": data.val.labels}, {"val": val_p}, threshold)
    plan = imbalance.plan(make_config([]).imbalance, data.train.labels)
    scoring.score_held_out(cfg, net, plan, data, found)
    return found
