"""Fixtures: each test process in its own folder, tiny generated datasets, a throwaway MLflow store.
Helpers the tests share are in tests/helpers.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from omegaconf import DictConfig

from tests.helpers import (
    ADMIN,
    TENT_STEPS,
    TINY,
    empty_store,
    make_config,
    store_overrides,
    write_kaggle_layout,
    xray,
)

if TYPE_CHECKING:
    import keras


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One worker more than the CPUs (for `-n logical`, pyproject.toml), 4 at most: the longest
    tests spend much of their time waiting (a tracking server, SLURM, a paused job), which the extra
    worker fills. On 2 cores (a Xeon), 3 workers ran the default suite in 4:53, 2 in 6:27."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus + 1)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `long` first, each in its file's order: xdist hands tests out in this order
    (xdist_group groups of several tests before them), and a long test handed out last would keep
    the whole run waiting for it while the other workers are idle."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session", autouse=True)
def in_own_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test process (each parallel worker) runs in its own folder, fixtures included: what the
    config puts under mlruns/ by default (training backups, keyed by config) lands there, not in the
    project, and never in a folder that another worker shares. Decoded images are cached there too
    (for the CLI processes the tests start as well), not in ~/.cache. Both are undone at the end."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        patch.setenv("PNEUMO_EXP_CACHE", str(tmp_path_factory.mktemp("decoded_image_cache")))
        yield


@pytest.fixture(scope="session")
def kaggle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-style folder without test/, as ../shared has it."""
    return write_kaggle_layout(tmp_path_factory.mktemp("kaggle")) / "chest_xray"


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small npz in the MedMNIST layout (28x28, labels shaped (n, 1)) and its md5."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 40), ("val", 16), ("test", 16)):
        labels = np.array([i % 4 != 0 for i in range(n)], dtype=np.uint8)  # 3:1 like the real data
        arrays[f"{split}_images"] = np.stack([np.asarray(xray(y, rng, 28)) for y in labels])
        arrays[f"{split}_labels"] = labels[:, None]
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    np.savez(path, **arrays)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def short_tent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tent takes TENT_STEPS Adam steps instead of 50 in this test (in this process only)."""
    monkeypatch.setattr("pneumo_exp.evaluation.tent.STEPS", TENT_STEPS)


@pytest.fixture
def store(tmp_path: Path) -> list[str]:
    """Overrides that send the run to a fresh MLflow store in tmp_path."""
    return store_overrides(tmp_path)


@pytest.fixture
def npz_overrides(tiny_npz: tuple[Path, str]) -> list[str]:
    path, md5 = tiny_npz
    return ["data=pneumoniamnist", f"data.path={path}", f"data.md5={md5}"]


@dataclass(frozen=True)
class LoggedRun:
    """A finished run with every artifact, and what made it."""
    run_id: str
    scores: dict[str, float]
    cfg: DictConfig
    overrides: list[str]
    model: keras.Model  # the model as trained, before MLflow saved it
    uri: str  # its store


@pytest.fixture(scope="session")
def logged_run(tmp_path_factory: pytest.TempPathFactory, tiny_npz: tuple[Path, str]) -> LoggedRun:
    """One full run on the tiny npz with every artifact logged (figures, Grad-CAM, the model): a
    test-time-augmented ensemble of 2 resnet_small networks without BatchNorm (after one epoch
    BatchNorm scores every image alike), scored with eval.adapt=bn (which leaves it unchanged).
    Tests that use it carry the xdist_group mark "logged_run", so that one worker runs them all and
    the run is made once."""
    from pneumo_exp.run import run_experiment
    from pneumo_exp.tracking import record

    store = tmp_path_factory.mktemp("logged_run")
    path, md5 = tiny_npz
    overrides = ["data=pneumoniamnist", f"data.path={path}", f"data.md5={md5}", *TINY, "train.tta_shift=0.1",
                 "train.members=2", "model=resnet_small", "regularization=none", "eval.adapt=bn",
                 "eval.min_images=2", "eval.alpha=0.001",
                 *store_overrides(store)]
    trained = {}
    log_model = record.log_model

    def keep_and_log(model: keras.Model, example: np.ndarray, predictions: np.ndarray) -> None:
        trained["model"] = model
        log_model(model, example, predictions)

    cfg = make_config(overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record, "log_model", keep_and_log)
        result = run_experiment(cfg, overrides)
    return LoggedRun(result.run_id, result.scores, cfg, overrides, trained["model"],
                     f"sqlite:///{store}/mlflow.db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend store and an artifact root, as in README;
    yields its URI until the test ends. The store is a copy of an empty one: the server then starts
    without making MLflow's tables (4 s)."""
    shutil.copy(empty_store(), folder / "server.db")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--artifacts-destination", str(folder / "server_artifacts"), "--workers", "1", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})  # no GenAI jobs
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGKILL)  # a throwaway server: no need to wait for its graceful exit
    server.wait(30)


@pytest.fixture
def mlflow_server(tmp_path):
    yield from start_server(tmp_path)


@pytest.fixture
def auth_server(tmp_path):
    """A tracking server that asks for credentials (`--app-name basic-auth`, docs/tracking.md): new
    users may read every experiment, and write to those they create. The admin is ADMIN."""
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path}/users.db\n"
                   f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   "auth_cache_ttl_seconds = 600\n")  # else each request hashes its password anew (PBKDF2)
    yield from start_server(tmp_path, "--app-name", "basic-auth", env={
        "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-only-key"})


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a disk of its own, 3 MiB (a tmpfs: root with CAP_SYS_ADMIN mounts one, else the
    test skips), unmounted when the test ends."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small disk here ({mounted.stderr.strip()}): needs CAP_SYS_ADMIN")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)
