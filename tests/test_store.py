"""The MLflow store: every wrong URI or file is one line naming what is wrong, before the run opens;
a store of another application is never written to; runs started together are all recorded."""

import ctypes
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest

from pneumo_exp import UserError
from pneumo_exp.tracking import jobs, names, record
from pneumo_exp.tracking.store import open_experiment, open_for_reading
from tests.helpers import QUIET, cli, empty_store, make_config, metrics_of, runs_in


def tables(path):
    with sqlite3.connect(path) as db:
        return sorted(name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))


def foreign_database(path):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    return path


@pytest.mark.parametrize(("code", "store"), [("test_auc", "test/auc"), ("final_val_auc", "val/auc"),
                                             ("extra_site_b_bn_auc", "extra/site_b_bn_auc"),
                                             ("threshold", "threshold"), ("val_auc", "val_auc")])
def test_scores_are_stored_in_sections_and_read_back_under_either_name(code, store):
    assert names.stored(code) == store
    assert names.in_code(store) == names.in_code(code) == code  # runs logged before the sections read alike


@pytest.mark.parametrize("uri, message", [
    ("sqlite:///", r"tracking URI 'sqlite:///' names no database file: use sqlite:///PATH/mlflow.db"),
    ("sqlit:///mlflow.db", r"tracking URI 'sqlit:///mlflow.db' has the unknown scheme 'sqlit': use sqlite"),
    ("./mlruns", r"tracking URI './mlruns' names a folder, which MLflow 3 no longer keeps runs in"),
])
def test_a_malformed_uri_is_one_line_at_once(uri, message):
    started = time.perf_counter()
    with pytest.raises(UserError, match=f"^{message}"):
        open_experiment(make_config([f"tracking.uri={uri}"]).tracking)
    assert time.perf_counter() - started < 5  # not MLflow's retries (106 s for sqlite:///)


def test_a_uri_naming_a_folder_is_one_line_at_once(tmp_path):
    started = time.perf_counter()
    for open_store in (lambda uri: open_experiment(make_config([f"tracking.uri={uri}"]).tracking),
                       open_for_reading):
        with pytest.raises(UserError, match=f"^tracking URI 'sqlite:///{tmp_path}' names the folder "
                                            f"{tmp_path}, not a database file: use sqlite:///{tmp_path}/mlflow.db"):
            open_store(f"sqlite:///{tmp_path}")
    assert time.perf_counter() - started < 5  # not MLflow's retries (105 s)


def test_a_corrupt_file_is_named_as_such(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database, just bytes " * 100)
    with pytest.raises(UserError, match=r"mlflow.db is not a readable SQLite database \(file is not a "
                                        r"database\): it is corrupt"):
        open_experiment(make_config([f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]).tracking)


def test_a_database_of_another_application_is_refused_untouched(tmp_path):
    path = foreign_database(tmp_path / "shop.db")
    with pytest.raises(UserError, match=r"shop.db is a database of another application \(tables: "
                                        r"customers\), not an MLflow store: pass a new file"):
        open_experiment(make_config([f"tracking.uri=sqlite:///{path}"]).tracking)
    assert tables(path) == ["customers"]  # no MLflow table was written into it


@pytest.mark.parametrize("make", ["missing", "empty file", "no tables", "corrupt", "foreign"])
def test_readers_never_create_a_store(tmp_path, make):
    path = tmp_path / "mlflow.db"
    if make == "empty file":
        path.touch()
    elif make == "no tables":
        sqlite3.connect(path).close()
    elif make == "corrupt":
        path.write_bytes(b"\x00garbage" * 50)
    elif make == "foreign":
        foreign_database(path)
    size = path.stat().st_size if path.exists() else None
    message = {"corrupt": r"is not a readable SQLite database", "foreign": r"another application"}.get(
        make, r"no MLflow store at .*mlflow.db: pass --tracking-uri")
    with pytest.raises(UserError, match=message):
        open_for_reading(f"sqlite:///{path}")
    assert (path.stat().st_size if path.exists() else None) == size  # nothing made, nothing written


def without_root_privileges() -> None:
    """In the child, before it starts Python: root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    obeys file modes as any user does (a read-only file or folder is then read-only to it)."""
    if os.geteuid() == 0:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "cannot drop a capability")


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_read_only_store_is_one_line_before_the_run_opens(tmp_path, npz_overrides, read_only):
    folder = tmp_path / "store"
    folder.mkdir()
    shutil.copy(empty_store(), folder / "mlflow.db")
    overrides = [*npz_overrides, *QUIET, f"tracking.uri=sqlite:///{folder}/mlflow.db",
                 f"tracking.artifact_location={tmp_path}/artifacts", f"hydra.run.dir={tmp_path}/run"]
    open_experiment(make_config(overrides).tracking)  # the experiment exists: only runs are written
    (folder if read_only == "folder" else folder / "mlflow.db").chmod(0o555)
    try:
        result = subprocess.run([sys.executable, "-m", "pneumo_exp", *overrides], cwd=tmp_path, text=True,
                                capture_output=True, timeout=120, preexec_fn=without_root_privileges)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert re.match(r"error: cannot write to the MLflow store .*mlflow.db \(.+\): make the file and its "
                    r"folder writable, or pass tracking.uri=", line), line
    assert runs_in(folder / "mlflow.db") == []


@pytest.mark.slow
@pytest.mark.long
def test_runs_started_together_on_a_fresh_store_all_finish(tmp_path, npz_overrides):
    """No store yet: three processes create it at once (under a lock). Two of them train the same
    config at once, each keeping its training backup apart; the third trains another config."""
    common = [*npz_overrides, *QUIET, "train.epochs=3", "train.early_stopping_patience=0",
              f"tracking.uri=sqlite:///{tmp_path}/fresh/mlflow.db",
              f"tracking.artifact_location={tmp_path}/a", f"tracking.backup_dir={tmp_path}/backups"]
    processes = [cli(*common, *extra, f"hydra.run.dir={tmp_path}/run{i}", cwd=tmp_path, background=True)
                 for i, extra in enumerate([[], [], ["seed=1"]])]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    runs = runs_in(tmp_path / "fresh" / "mlflow.db")
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "0", "1"]
    assert all(metrics_of(r)["epochs_trained"] == 3 for r in runs)
    assert not any((tmp_path / "backups").iterdir())  # each run removed its own backup


SECRET = "S3cret-pw"


def test_a_password_in_a_database_uri_is_never_shown(tmp_path, npz_overrides):
    uri = f"postgresql://alice:{SECRET}@127.0.0.1:9/mlflow"
    result = cli(*npz_overrides, *QUIET, f"tracking.uri={uri}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and SECRET not in result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot open the MLflow store postgresql://alice:***@127.0.0.1:9/mlflow")


def test_a_password_in_a_server_uri_is_refused_for_the_environment():
    with pytest.raises(UserError, match=r"^tracking URI 'http://alice:\*\*\*@127.0.0.1:9' holds a password"
                                        r".* set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASS") as no:
        open_experiment(make_config([f"tracking.uri=http://alice:{SECRET}@127.0.0.1:9"]).tracking)
    assert SECRET not in str(no.value)


def test_a_run_stores_no_password_of_its_tracking_uri(tmp_path, store):
    """The params, config.yaml and the overrides tag show `USER:***@` (the store opened is another)."""
    uri = f"postgresql://alice:{SECRET}@db/mlflow"
    cfg = make_config([*store, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    open_experiment(cfg.tracking)
    cfg.tracking.uri = uri
    tags = jobs.run_tags(cfg, jobs.prepare(cfg), [f"tracking.uri={uri}"])
    with mlflow.start_run() as run:
        record.log_config(cfg)
    logged = mlflow.get_run(run.info.run_id).data.params["tracking.uri"]
    config_yaml = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert SECRET not in tags["overrides"] + logged + config_yaml
    assert logged == "postgresql://alice:***@db/mlflow" and "alice:***@" in tags["overrides"]


def test_a_run_into_a_deleted_experiment_says_how_to_restore_it(tmp_path):
    cfg = make_config([f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]).tracking
    open_experiment(cfg)
    mlflow.delete_experiment(mlflow.get_experiment_by_name("pneumo_exp").experiment_id)
    with pytest.raises(UserError, match=r"^experiment 'pneumo_exp' was deleted: restore it with "
                                        r"`MLFLOW_TRACKING_URI=sqlite:///.*mlflow experiments restore "
                                        r"--experiment-id 1`, or pass tracking.experiment=ANOTHER_NAME$"):
        open_experiment(cfg)
