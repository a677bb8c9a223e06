"""Scale-out: parallel jobs in fresh processes, the SLURM preset, a tracking server, Optuna search."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow.server import get_app_client

from pneumo_exp import UserError, cpus_per_job
from pneumo_exp.tracking import reading
from pneumo_exp.tracking.launching import LEFT_THE_QUEUE, SqueueWatcher
from pneumo_exp.tracking.search import SearchSweeper
from tests.helpers import (
    ADMIN,
    LEAN_TRACKING,
    PROJECT,
    TINY,
    by_role,
    crashing,
    make_config,
    metrics_of,
    runs_in,
    store_overrides,
)
from tests.helpers import cli as run_cli


@pytest.fixture
def cli(tmp_path, tiny_npz):
    """`python -m pneumo_exp -m ARGS` on the tiny npz, sweep outputs in tmp_path."""
    path, md5 = tiny_npz

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run_cli("-m", *args, f"data.path={path}", f"data.md5={md5}", *TINY,
                       f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path, env=env)

    return run


def sweep_runs(uri: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    """The sweep's one parent run and its children."""
    parents, children = by_role(runs_in(uri))
    assert len(parents) == 1
    return parents[0], children


def check_parallel_sweep(result: subprocess.CompletedProcess, uri: str, jobs: int, figures: bool = True
                         ) -> None:
    """`jobs` children FINISHED under one FINISHED parent, each in its own process with its share
    of the cores, each with its artifacts (its figures only if `figures`); nothing left RUNNING."""
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(uri)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * jobs
    assert len({c.data.tags["pid"] for c in children} | {parent.data.tags["pid"]}) == jobs + 1
    assert {c.data.params["train.intra_op_threads"] for c in children} == {str(cpus_per_job(jobs))}
    for child in children:
        logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=child.info.run_id)}
        assert {"test_predictions.csv", "config.yaml"} <= logged
        assert ("plots" in logged) == figures
        assert mlflow.models.get_model_info(reading.loadable(f"runs:/{child.info.run_id}/model")).signature
    assert f"{jobs} runs made ({jobs} FINISHED), 0 skipped" in result.stdout


def test_launcher_presets_compose():
    parallel = make_config(["launcher=parallel", "launcher.jobs=4"])
    assert parallel.train.intra_op_threads == parallel.train.inter_op_threads == cpus_per_job(4)
    local = make_config([])
    assert local.launcher.name == "local" and local.train.intra_op_threads == cpus_per_job(1)
    with pytest.raises(UserError, match=r"^launcher.jobs=0 is invalid: use an integer >= 1"):
        from pneumo_exp import config
        config.check(make_config(["launcher=parallel", "launcher.jobs=0"]))


def test_the_ablation_preset_runs_two_jobs_at_once_unless_told_otherwise():
    assert make_config(["+sweeps=ablation"]).launcher == {"name": "parallel", "jobs": 2}
    assert make_config(["+sweeps=ablation", "launcher=local"]).launcher.name == "local"
    assert make_config(["+sweeps=ablation", "launcher.jobs=3"]).launcher.jobs == 3


@pytest.mark.slow
@pytest.mark.long
def test_four_parallel_jobs_on_two_cores_into_one_sqlite_store(cli, tmp_path):
    result = cli("launcher=parallel", "launcher.jobs=4", "seed=0,1,2,3", "tracking.log_figures=false",
                 *store_overrides(tmp_path))  # the figures' artifacts: checked through a server below
    check_parallel_sweep(result, f"sqlite:///{tmp_path}/mlflow.db", 4, figures=False)


ALICE, BOB = ("alice", "alice-password-7Q2"), ("bob", "bob-password-9Z4")


def credentials(user: str, password: str) -> dict[str, str]:
    """What MLflow reads a tracking server's credentials from: the environment (empty: none)."""
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def files_holding(folder: Path, secrets: tuple[str, ...], *skip: str) -> list[Path]:
    """The files under `folder` (but those named in `skip`) whose bytes hold any of `secrets`."""
    return [path for path in folder.rglob("*") if path.is_file() and path.name not in skip
            and any(secret.encode() in path.read_bytes() for secret in secrets)]


@pytest.mark.long
def test_parallel_sweep_through_a_server_that_asks_for_credentials(cli, auth_server, tmp_path, monkeypatch):
    """Credentials come from the environment only: without them (or with wrong ones) nothing runs or
    reports; with them a parallel sweep finishes; a user who may only read the experiment adds
    nothing to it; and no password is in any param, tag, artifact, file or message."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    users = get_app_client("basic-auth", tracking_uri=auth_server)
    for user, password in (ALICE, BOB):
        users.create_user(user, password)
    server = ["tracking=server", f"tracking.uri={auth_server}"]
    nobody = cli(*server, "seed=0", env=credentials("", ""))
    sweep = cli("launcher=parallel", "launcher.jobs=2", "seed=0,1", *server, env=credentials(*ALICE))
    reader = cli(*server, "seed=2", env=credentials(*BOB))
    no_report = run_cli("--tracking-uri", auth_server, module="pneumo_exp.report", cwd=tmp_path,
                        env=credentials(ALICE[0], "a-wrong-password"))

    check_parallel_sweep(sweep, auth_server, 2)
    assert any((tmp_path / "server_artifacts").rglob("test_predictions.csv"))  # stored by the server
    for refused, says in ((nobody, "no or wrong credentials; set MLFLOW_TRACKING_USERNAME"),
                          (reader, "denied bob access to experiment 'pneumo_exp': ask its owner"),
                          (no_report, "no or wrong credentials; set MLFLOW_TRACKING_USERNAME")):
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and says in last
    assert len(runs_in(auth_server)) == 3  # the sweep's parent and children only
    secrets = (ALICE[1], BOB[1], ADMIN[1])
    assert not [secret for secret in secrets for result in (nobody, sweep, reader, no_report)
                if secret in result.stdout + result.stderr]
    assert not files_holding(tmp_path, secrets, "basic_auth.ini")  # the store, artifacts, Hydra's folders


def test_unreachable_tracking_server_is_one_line_before_any_job(cli):
    started = time.perf_counter()
    result = cli("tracking=server", "tracking.uri=http://127.0.0.1:9", "seed=0,1")
    assert result.returncode != 0
    assert time.perf_counter() - started < 60
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable")
    assert len(lines) == 1, result.stderr


def test_slurm_preset_submits_an_sbatch_array_with_its_resources(cli, tmp_path):
    """No cluster here: a stand-in `sbatch` keeps the script submitit wrote and refuses it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("sbatch", f'cp "$1" {tmp_path}/submitted.sh\necho "no cluster" >&2\nexit 1'),
                         ("srun", "exit 1")):  # submitit looks for srun before it submits
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    result = cli("launcher=slurm", "hydra.launcher.partition=cpu", "seed=0,1", *store_overrides(tmp_path),
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode != 0
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH --partition=cpu", "#SBATCH --array=0-1%2",
                 "#SBATCH --time=240", "#SBATCH --mem=16GB", "#SBATCH --job-name=pneumo_exp"):
        assert line in script
    assert "submitit.core._submit" in script
    parent, children = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert parent.info.status == "FAILED" and children == []  # the refused sweep is not left RUNNING


@pytest.mark.slow
@pytest.mark.long
def test_search_optimizes_validation_auc_and_resumes(cli, tmp_path):
    args = ("+sweeps=search", "hydra.sweeper.n_trials=2", *LEAN_TRACKING, *store_overrides(tmp_path))
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    parent, trials = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    best = max(trials, key=lambda t: metrics_of(t)["final_val_auc"])
    assert metrics_of(parent)["best_val_auc"] == pytest.approx(metrics_of(best)["final_val_auc"])
    assert f"train.learning_rate={best.data.params['train.learning_rate']}" in best.data.tags["overrides"]
    assert {t.data.params["imbalance.name"] for t in trials} == {"focal"}
    assert len({t.data.params["imbalance.gamma"] for t in trials}) == 2  # each trial its own point

    again = cli(*args)  # the seeded sampler proposes the same trials: all already FINISHED
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 runs made (none), 2 skipped" in again.stdout
    assert len(sweep_runs(f"sqlite:///{tmp_path}/mlflow.db")[1]) == 2


@pytest.mark.parametrize("launcher", ["local", "parallel", "slurm"])
def test_search_sweeper_is_made_with_every_launcher(launcher):
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweeps=search", f"launcher={launcher}"],
                      return_hydra_config=True)
    sweeper = instantiate(cfg.hydra.sweeper)
    assert isinstance(sweeper, SearchSweeper) and sweeper.max_batch_size == cfg.launcher.jobs


def test_search_without_optuna_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    sweeper = SearchSweeper(n_trials=1, max_batch_size=1, seed=0, storage=None, study_name=None, params={})
    with pytest.raises(SystemExit, match="2"):
        sweeper.sweep([])
    assert capsys.readouterr().err == 'error: the search needs Optuna: pip install -e ".[search]"\n'


def test_a_search_whose_trials_all_fail_says_so_and_exits_1(cli, tmp_path):
    result = cli("+sweeps=search", "hydra.sweeper.n_trials=1", *LEAN_TRACKING, *store_overrides(tmp_path),
                 env=crashing(tmp_path))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no trial finished, so there is no best" in result.stdout
    assert "error: 1 of the sweep's runs did not finish" in result.stderr
    parent, trials = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert parent.info.status == "FAILED" and [t.info.status for t in trials] == ["FAILED"]


def test_squeue_states_read_running_and_pending_tasks_and_mark_those_gone():
    watcher = SqueueWatcher(delay_s=60)
    for job in ("12_0", "12_1", "12_2", "13"):
        watcher.register_job(job)
    info = watcher.read_info("12_1|RUNNING|vm\n12_2|PENDING|\n13|RUNNING|vm\n")
    assert {job: info[job]["State"] for job in ("12_1", "12_2", "13")} == {
        "12_1": "RUNNING", "12_2": "PENDING", "13": "RUNNING"}
    assert info["12_0"]["State"] == LEFT_THE_QUEUE  # done: submitit then looks for its result file
