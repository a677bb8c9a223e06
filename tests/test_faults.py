"""Faults and recovery: bad config and stores fail fast in one line; interrupted, crashed and killed
runs never stay RUNNING; an interrupted run resumes into the same MLflow run."""

import errno
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest

from pneumo_exp import UserError, disk_full
from pneumo_exp.run import run_experiment
from pneumo_exp.tracking import record
from pneumo_exp.tracking.store import open_experiment
from tests.helpers import (
    PROJECT,
    QUIET,
    TINY,
    cli,
    make_config,
    metrics_of,
    pausing,
    runs_in,
    store_overrides,
)


def test_unknown_keys_are_rejected():
    with pytest.raises(UserError, match=r"^unknown config key train\.epoch: check its spelling"):
        run_experiment(make_config(["+train.epoch=5"]))
    with pytest.raises(UserError, match=r"^unknown config key lr:"):
        run_experiment(make_config(["+lr=0.1"]))


def test_config_and_data_errors_come_before_tensorflow(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(PROJECT)!r})
from tests.helpers import make_config
from pneumo_exp import UserError
from pneumo_exp.run import run_experiment
for overrides in (["train.epochs=0"], ["data=chest_xray", "data.root={tmp_path}/none"],
                  ["data.path={tmp_path}/none.npz"]):
    try:
        run_experiment(make_config(overrides))
    except UserError as error:
        print(error)
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "train.epochs=0 is invalid: use an integer >= 1",
        f"data.root={tmp_path}/none does not exist: pass the folder that holds train/",
        f"data.path={tmp_path}/none.npz does not exist: pass the path of pneumoniamnist.npz"]


def test_unwritable_store_and_unreachable_server_fail_before_training(tmp_path, npz_overrides):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    cfg = make_config([*npz_overrides, f"tracking.uri=sqlite:///{blocker}/mlflow.db"])
    with pytest.raises(UserError, match=r"^cannot open the MLflow store .* make its folder writable"):
        run_experiment(cfg)
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"^MLflow tracking server http://127.0.0.1:9 is unreachable"):
        run_experiment(make_config([*npz_overrides, "tracking.uri=http://127.0.0.1:9"]))
    assert time.perf_counter() - started < 30  # not MLflow's minutes of retries


def test_disk_full_while_logging_artifacts_fails_the_run_and_keeps_its_curves(
        npz_overrides, store, monkeypatch, tmp_path):
    log_figure = mlflow.log_figure

    def full_disk(figure, artifact_file, **kwargs):
        if artifact_file == "plots/learning_curves.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        log_figure(figure, artifact_file, **kwargs)

    monkeypatch.setattr(mlflow, "log_figure", full_disk)
    with pytest.raises(OSError):
        run_experiment(make_config([*npz_overrides, *TINY, *store]))
    (run,) = runs_in(tmp_path / "mlflow.db")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "OSError: [Errno 28] No space left on device"
    assert "val_auc" in metrics_of(run)  # the epoch's curves stay logged


def test_a_full_disk_is_told_from_other_errors_however_wrapped():
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    try:
        try:
            raise sqlite_full
        except sqlite3.OperationalError as error:
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) …") from error
    except mlflow.exceptions.MlflowException as wrapped:
        assert disk_full(wrapped) == "database or disk is full"
    assert disk_full(OSError(errno.ENOSPC, "No space left on device")) == "[Errno 28] No space left on device"
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(RuntimeError("boom")) is None


def leave_free(folder, kib):
    """Fill `folder`'s disk but `kib` KiB."""
    free = shutil.disk_usage(folder).free // 1024
    (folder / "filler").write_bytes(b"\0" * max(0, free - kib) * 1024)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("where, free", [("store", 36), ("store", 4), ("artifacts", 8), ("backups", 100)])
def test_a_full_disk_ends_the_run_in_one_line_or_costs_only_its_backup(where, free, small_disk, tmp_path,
                                                                       npz_overrides):
    """The store's or the artifacts' disk full: exit 2, one line, the run FAILED (none started where
    the store has no room for one; KILLED by the next command to open the store, were its status the
    one write that failed). The backups' disk full: the run finishes without them, saying so. Never
    a traceback or a crash of the process."""
    folders = {"store": tmp_path, "artifacts": tmp_path / "artifacts", "backups": tmp_path / "backups"}
    folders[where] = small_disk
    store = [f"tracking.uri=sqlite:///{folders['store']}/mlflow.db",
             f"tracking.artifact_location={folders['artifacts']}",
             f"tracking.backup_dir={folders['backups']}"]
    open_experiment(make_config(store).tracking)  # MLflow's tables before the disk fills
    leave_free(small_disk, free)
    result = cli(*npz_overrides, *TINY, "train.epochs=2", "tracking.log_model=false", *store,
                 f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (small_disk / "filler").unlink()
    open_experiment(make_config(store).tracking)  # the next command to open the store
    runs = runs_in(folders["store"] / "mlflow.db")  # none, where the store could not even start one
    last = result.stderr.strip().splitlines()[-1]
    if where == "backups":
        assert result.returncode == 0 and [r.info.status for r in runs] == ["FINISHED"]
        assert "warning: no room on the disk of " in result.stderr
    else:
        assert result.returncode == 2 and {r.info.status for r in runs} <= {"FAILED", "KILLED"}
        assert re.match(r"error: (the disk is full where the run writes|cannot write to the MLflow store)"
                        r".*(database or disk is full|No space left on device).*: free space", last), last


@pytest.mark.parametrize("error, status", [(KeyboardInterrupt(), "KILLED"), (RuntimeError("boom"), "FAILED")])
def test_interrupted_or_failed_run_resumes_into_the_same_mlflow_run(error, status, npz_overrides, store,
                                                                    monkeypatch, tmp_path):
    overrides = [*npz_overrides, *QUIET, "train.epochs=3", "train.early_stopping_patience=0", *store,
                 f"tracking.backup_dir={tmp_path}/backups"]
    log_epoch, epochs_logged = record.log_epoch, []

    def log_then_stop(epoch, logs):
        log_epoch(epoch, logs)
        epochs_logged.append(epoch + 1)
        if epoch == 1:
            raise error  # as Ctrl-C, or a crash, after the second epoch

    monkeypatch.setattr(record, "log_epoch", log_then_stop)
    with pytest.raises(type(error)):
        run_experiment(make_config(overrides))
    (stopped,) = runs_in(tmp_path / "mlflow.db")
    assert stopped.info.status == status

    monkeypatch.setattr(record, "log_epoch", lambda e, logs: (epochs_logged.append(e + 1),
                                                                log_epoch(e, logs)))
    # resumed on "another node": its thread count differs, which changes no result
    result = run_experiment(make_config([*overrides, "train.resume=true", "train.intra_op_threads=1"]))
    assert result.run_id == stopped.info.run_id
    assert epochs_logged == [1, 2, 3]  # the resumed fit trained epoch 3 only
    (run,) = runs_in(tmp_path / "mlflow.db")
    assert run.info.status == "FINISHED" and metrics_of(run)["epochs_trained"] == 3
    # a FINISHED run carries no `error`; the one it recovered from stays readable
    assert "error" not in run.data.tags
    assert run.data.tags.get("resumed_after_error") == stopped.data.tags.get("error")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_auc")]
    assert steps == [1, 2, 3]
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())


@pytest.mark.slow
@pytest.mark.long
def test_an_ensemble_interrupted_in_its_second_member_resumes_there(npz_overrides, store, monkeypatch,
                                                                   tmp_path):
    overrides = [*npz_overrides, *QUIET, "train.epochs=2", "train.early_stopping_patience=0",
                 "train.members=2", *store, f"tracking.backup_dir={tmp_path}/backups"]
    log_epoch, logged = record.log_epoch, []

    def log_then_interrupt(epoch, logs):
        log_epoch(epoch, logs)
        logged.append((sorted(logs)[0], epoch + 1))
        if logged[-1] == ("member2_accuracy", 1):
            raise KeyboardInterrupt  # Ctrl-C after the second member's first epoch

    monkeypatch.setattr(record, "log_epoch", log_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_config(overrides))
    monkeypatch.setattr(record, "log_epoch", lambda e, logs: (logged.append((sorted(logs)[0], e + 1)),
                                                                log_epoch(e, logs)))
    result = run_experiment(make_config([*overrides, "train.resume=true"]))
    assert logged == [("accuracy", 1), ("accuracy", 2), ("member2_accuracy", 1), ("member2_accuracy", 2)]
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED" and metrics_of(run)["epochs_trained"] == 4
    assert not any((tmp_path / "backups").iterdir())


def start(args, tmp_path, tiny_npz, multirun=False, env=None):
    """Launch the CLI in the background, the store created first: this test process reads it while
    the CLI writes, and two processes creating one fresh SQLite store at once collide."""
    path, md5 = tiny_npz
    store = store_overrides(tmp_path)
    open_experiment(make_config(store).tracking)
    flags = ["-m"] if multirun else []
    return cli(*flags, f"data.path={path}", f"data.md5={md5}", *QUIET, "train.early_stopping_patience=0",
               *store, f"tracking.backup_dir={tmp_path}/backups", f"hydra.sweep.dir={tmp_path}/sweep",
               f"hydra.run.dir={tmp_path}/run", *args, cwd=tmp_path, env=env, background=True)  # args win


def wait_for_an_epoch(tmp_path, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        running = [r for r in runs_in(tmp_path / "mlflow.db")
                   if r.info.status == "RUNNING" and "val_auc" in metrics_of(r)]
        if running:
            return running[0]
        time.sleep(1)
    raise AssertionError(f"no epoch was logged: {process.communicate()[0][-2000:]}")


@pytest.mark.slow
@pytest.mark.long
def test_sigterm_marks_the_run_killed_and_keeps_its_curves(tmp_path, tiny_npz):
    process = start(["train.epochs=500"], tmp_path, tiny_npz)
    run = wait_for_an_epoch(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 143, output[-3000:]  # 128 + SIGTERM, as the shell reports it
    assert "Traceback" not in output and "stopped by SIGTERM" in output
    (after,) = runs_in(tmp_path / "mlflow.db")
    assert after.info.run_id == run.info.run_id and after.info.status == "KILLED"
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_auc")) >= 1


@pytest.mark.long
def test_sigterm_to_a_sweep_marks_its_job_and_its_parent_killed(tmp_path, tiny_npz):
    process = start(["seed=0,1", "train.epochs=500"], tmp_path, tiny_npz, multirun=True)
    wait_for_an_epoch(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 143, output[-3000:]
    status = {r.data.tags["sweep_role"]: r.info.status for r in runs_in(tmp_path / "mlflow.db")}
    assert status == {"child": "KILLED", "parent": "KILLED"}


@pytest.mark.long
def test_a_sweep_runs_once_at_a_time_and_a_sigkilled_job_is_completed_on_rerun(tmp_path, tiny_npz):
    sweep = ["seed=0,1", "train.epochs=2"]
    process = start(sweep, tmp_path, tiny_npz, multirun=True, env=pausing(tmp_path, 600))  # killed in it
    victim = wait_for_an_epoch(tmp_path, process)
    again = start(sweep, tmp_path, tiny_npz, multirun=True)  # the same sweep, in another terminal
    output = again.communicate(timeout=120)[0]
    assert again.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert re.match(r"error: sweep \w+ is already running \(parent run \w+, process \d+ on .+\): wait for it",
                    output.strip().splitlines()[-1])
    assert len(runs_in(tmp_path / "mlflow.db")) == 2  # nothing trained twice
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert {r.info.status for r in runs_in(tmp_path / "mlflow.db")} == {"RUNNING"}  # parent + job

    rerun = start(sweep, tmp_path, tiny_npz, multirun=True)  # the same sweep, without the pause
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output[-3000:]
    runs = {r.info.run_id: r for r in runs_in(tmp_path / "mlflow.db")}
    assert "RUNNING" not in {r.info.status for r in runs.values()}
    assert runs[victim.info.run_id].info.status == "KILLED"
    (parent,) = [r for r in runs.values() if r.data.tags.get("sweep_role") == "parent"]
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags  # its orphan cleanup's
    assert parent.data.tags["resumed_after_error"].startswith("process ")  # note is kept, renamed
    finished = [r for r in runs.values() if r.data.tags.get("sweep_role") == "child"
                and r.info.status == "FINISHED"]
    assert sorted(r.data.params["seed"] for r in finished) == ["0", "1"]


def test_a_machine_without_git_tags_the_commit_unknown(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    assert record.git_tags() == {"git_commit": "unknown", "git_dirty": "unknown"}
