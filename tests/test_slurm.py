"""launcher=slurm on a real single-node SLURM cluster (tests/slurm/start_cluster.sh: Debian's
packages, daemons started by hand) against an MLflow tracking server on loopback: a cross-validated
sweep one of whose jobs is cancelled with scancel (its run ends KILLED or FAILED, never RUNNING), and
which the same command then completes, running that job alone, to one parent with its report.

Marked `slurm`. Where no cluster can be started (not root, no apt-get, no packages) the tests skip
saying why; in CI (CI=true), where .ci/run's machine can start one, they fail instead."""

import os
import shutil
import subprocess
import time

import mlflow
import pytest

from tests.helpers import LEAN_TRACKING, PROJECT, TINY, by_role, metrics_of, pausing, runs_in
from tests.helpers import cli as run_cli

START = PROJECT / "tests" / "slurm" / "start_cluster.sh"
ON_THE_NODE = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]  # the node: this machine

pytestmark = [pytest.mark.slurm, pytest.mark.long, pytest.mark.xdist_group("slurm")]


@pytest.fixture(scope="module")
def slurm_conf() -> str:
    """The cluster's slurm.conf path, the cluster started (or found running)."""
    can_install = os.geteuid() == 0 and shutil.which("apt-get")
    if not (shutil.which("slurmctld") or can_install):
        reason = "no SLURM here, and no root with apt-get to install Debian's slurmctld slurmd munge"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    started = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if started.returncode:
        reason = f"the SLURM cluster did not start: {started.stderr.strip()[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return started.stdout.strip().splitlines()[-1]


@pytest.fixture
def slurm_sweep(slurm_conf, mlflow_server, tiny_npz, tmp_path):
    """`python -m pneumo_exp -m launcher=slurm ARGS`: 1 CPU per job, runs logged to the server."""
    path, md5 = tiny_npz

    def run(*args: str, env: dict[str, str] | None = None, background: bool = False):
        return run_cli("-m", "launcher=slurm", *ON_THE_NODE, *args, f"data.path={path}", f"data.md5={md5}",
                       *TINY, *LEAN_TRACKING, "tracking=server", f"tracking.uri={mlflow_server}",
                       f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path, background=background,
                       env={"SLURM_CONF": slurm_conf, **(env or {})})

    return run


def running_task(job_number: int, timeout: float = 300) -> str:
    """The SLURM id (ARRAY_TASK) of the sweep's job `job_number` once it runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        listed = subprocess.run(["squeue", "-h", "-r", "-t", "RUNNING", "-o", "%i"], capture_output=True,
                                text=True).stdout.split()
        found = [task for task in listed if task.endswith(f"_{job_number}")]
        if found:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"job {job_number} did not start running in {timeout} s")


def first_epoch_logged(uri: str, fold: str, timeout: float = 300) -> mlflow.entities.Run:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = [r for r in by_role(runs_in(uri))[1] if r.data.params.get("data.fold") == fold]
        if runs and "loss" in metrics_of(runs[0]):
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"fold {fold}'s run logged no epoch in {timeout} s")


def test_a_cancelled_job_ends_its_run_and_alone_runs_again_to_the_sweeps_report(
        slurm_sweep, slurm_conf, mlflow_server, tmp_path, monkeypatch):
    """A cross-validated sweep of 4 jobs on SLURM, one of which scancel stops: that run ends KILLED
    or FAILED, never RUNNING; the same command runs it alone, and then every fold has FINISHED under
    one parent run with its report."""
    args = ("+sweeps=cv", "data.folds=4")
    sweep = slurm_sweep(*args, env=pausing(tmp_path, 8), background=True)  # each job pauses after an epoch
    monkeypatch.setenv("SLURM_CONF", slurm_conf)  # for squeue and scancel here
    victim = first_epoch_logged(mlflow_server, "0")
    subprocess.run(["scancel", running_task(0)], check=True)
    output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 1, output[-3000:]
    assert "error: 1 of the sweep's runs did not finish" in output and "Traceback" not in output
    runs = {r.info.run_id: r for r in runs_in(mlflow_server)}
    assert runs[victim.info.run_id].info.status in ("KILLED", "FAILED")
    assert "RUNNING" not in {r.info.status for r in runs.values()}

    again = slurm_sweep(*args)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "1 runs made (1 FINISHED), 3 skipped" in again.stdout
    (parent,), children = by_role(runs_in(mlflow_server))
    assert parent.info.status == "FINISHED"
    finished = sorted(c.data.params["data.fold"] for c in children if c.info.status == "FINISHED")
    assert finished == ["0", "1", "2", "3"]  # every fold's job, under the one parent
    mlflow.set_tracking_uri(mlflow_server)
    logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=parent.info.run_id,
                                                               artifact_path="report")}
    assert "report/report.md" in logged
    assert "Bypassing sacct error" not in output and output.count("job states come from squeue") == 1
