"""`python -m pneumo_exp.report` on a store that is not as a finished sweep left it: its experiment
deleted, its runs FAILED or their artifacts gone, a baseline that names no cell. Each is one line and
exit code 2, or a report of what is left with a warning."""

import shutil
from pathlib import Path

import mlflow
import pytest

from pneumo_exp import UserError, report
from pneumo_exp.report import runs as report_runs
from tests.helpers import QUIET, by_role, cli, empty_store, runs_in, store_overrides
from tests.test_report import STORE, three_cells


def sweep_runs(tmp_path: Path, statuses: list[str]) -> None:
    """Runs of sweep s1 in a fresh store at tmp_path/mlflow.db, ended `statuses`, without artifacts."""
    shutil.copy(empty_store(), tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(STORE.format(tmp=tmp_path))
    experiment_id = client.create_experiment("pneumo_exp", artifact_location=str(tmp_path / "artifacts"))
    for seed, status in enumerate(statuses):
        run = client.create_run(experiment_id, tags={"sweep_id": "s1", "sweep_role": "child",
                                                     "config_hash": str(seed)})
        client.log_param(run.info.run_id, "seed", seed)
        client.set_terminated(run.info.run_id, status)


def report_error(tmp_path: Path, capsys, *args: str) -> str:
    """The last line `report ARGS` prints on the store at tmp_path/mlflow.db, where it exits 2."""
    with pytest.raises(SystemExit) as exit_:
        report.main(["--tracking-uri", STORE.format(tmp=tmp_path), *args, "--no-log", "--out",
                     str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err.splitlines()[-1]


def test_a_sweep_whose_runs_all_failed_says_so_and_how_to_finish_them(tmp_path, capsys):
    sweep_runs(tmp_path, ["FAILED", "KILLED", "FAILED"])
    assert report_error(tmp_path, capsys, "--sweep", "s1") == (
        "error: sweep s1 has no FINISHED run in experiment 'pneumo_exp' (2 FAILED, 1 KILLED): run the "
        "sweep's command again to finish them (each FAILED run's error tag says why)")


def test_a_sweep_whose_runs_all_lost_their_artifacts_is_one_line(tmp_path, capsys):
    sweep_runs(tmp_path, ["FINISHED", "FINISHED"])
    line = report_error(tmp_path, capsys, "--sweep", "s1")
    assert line.startswith("error: none of the sweep's 2 FINISHED runs has its test_predictions.csv any "
                           f"more (e.g. {tmp_path}/artifacts/")
    assert line.endswith("): restore their artifact folders, or run the sweep again with tracking.rerun=true")


def test_a_deleted_experiment_is_named_with_the_command_that_restores_it(tmp_path, capsys):
    sweep_runs(tmp_path, [])
    client = mlflow.MlflowClient(STORE.format(tmp=tmp_path))
    client.delete_experiment(client.get_experiment_by_name("pneumo_exp").experiment_id)
    line = report_error(tmp_path, capsys)
    assert line == (f"error: experiment 'pneumo_exp' was deleted: restore it with `MLFLOW_TRACKING_URI="
                    f"{STORE.format(tmp=tmp_path)} mlflow experiments restore --experiment-id 1`, or pass "
                    "--experiment with another name")
    command = line.split("`")[1].split()
    restored = cli(*command[2:], module="mlflow", cwd=tmp_path,
                   env={"MLFLOW_TRACKING_URI": command[0].split("=", 1)[1]})
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert report_error(tmp_path, capsys).startswith("error: no sweep in experiment 'pneumo_exp'")


@pytest.mark.parametrize("baseline, reason", [
    ("regularization=none", "the sweep did not vary regularization"),
    ("seed=1", "seed repeats each cell, it names none"),
    ("imbalance", "'imbalance' is not FACTOR=VALUE"),
])
def test_a_baseline_by_a_factor_the_sweep_did_not_vary_names_those_it_varied(baseline, reason):
    """Such a factor matched every cell, so the report picked a baseline without a word."""
    with pytest.raises(UserError) as error:
        report_runs.pick_baseline(three_cells(), baseline)
    assert str(error.value) == (f"--baseline {baseline!r}: {reason}; name a cell by the factors it varied "
                                "(imbalance), e.g. --baseline 'imbalance=focal'")


@pytest.mark.slow
@pytest.mark.long
def test_a_run_whose_artifacts_were_deleted_is_left_out_of_the_report_with_a_warning(tmp_path, tiny_npz,
                                                                                     capsys):
    path, md5 = tiny_npz
    made = cli("-m", "imbalance=none,focal", f"data.path={path}", f"data.md5={md5}", *QUIET,
               *store_overrides(tmp_path), f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    _, (lost, kept) = by_role(runs_in(tmp_path / "mlflow.db"))
    shutil.rmtree(Path(lost.info.artifact_uri.removeprefix("file://")).parent)
    report.main(["--tracking-uri", STORE.format(tmp=tmp_path), "--no-log", "--out", str(tmp_path / "r")])
    warning = (f"warning: 1 of the sweep's FINISHED runs lack their test_predictions.csv and are left out "
               f"of the report: run {lost.info.run_id} (artifacts under {lost.info.artifact_uri})")
    assert warning in capsys.readouterr().err.splitlines()  # among MLflow's progress bars
    text = (tmp_path / "r" / "report.md").read_text()
    assert "1 FINISHED runs in 1 cells" in text and f"imbalance={kept.data.tags['imbalance']}" in text
