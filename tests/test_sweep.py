"""Sweeps: their identity, and end to end through the CLI: parent and child runs, resume, the report."""

import re
import shutil
import sqlite3
import subprocess
import tarfile

import mlflow
import pytest
from omegaconf import OmegaConf

from pneumo_exp import report
from pneumo_exp.tracking import jobs, sweep
from tests.helpers import (
    LEAN_TRACKING,
    PROJECT,
    QUIET,
    by_role,
    cli,
    crashing,
    make_config,
    metrics_of,
    runs_in,
    store_overrides,
)


@pytest.fixture
def sweep_cli(tmp_path, tiny_npz):
    """`python -m pneumo_exp -m ARGS` on the tiny npz into a store in tmp_path, without figures
    and models (the report reads predictions and curves), run eagerly (TINY says why)."""
    path, md5 = tiny_npz

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return cli("-m", *args, f"data.path={path}", f"data.md5={md5}", "train.batch_size=8",
                   "train.run_eagerly=true", *LEAN_TRACKING, *store_overrides(tmp_path),
                   f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path, env=env)

    return run


def test_how_jobs_run_resume_or_log_does_not_change_which_sweep_it_is():
    def definition(*overrides):
        return sweep.definition(OmegaConf.create({"hydra": {"sweeper": {"params": None},
                                                             "overrides": {"task": list(overrides)}}}))

    cells = ("imbalance=focal,none", "seed=0,1")
    assert definition(*cells, "launcher=parallel", "launcher.jobs=2", "train.resume=true",
                      "tracking.rerun=true", "+tracking.tags=x") == definition(*cells)
    assert definition(*cells, "train.epochs=2") != definition(*cells)


def test_a_run_is_named_by_what_tells_its_cell_from_the_defaults():
    def named(*overrides):
        return jobs.prepare(make_config(list(overrides)), overrides).name

    assert named() == "pneumoniamnist seed=0"
    assert named("+experiment=quick", "data=chest_xray", "data.root=/d", "model=resnet_small",
                 "data.image_size=96", "launcher=parallel", "train.resume=true", "seed=2") == \
        "chest_xray quick model=resnet_small image_size=96 seed=2"  # where and how it runs: left out
    assert named("data.folds=5", "data.fold=3", "imbalance=focal") == \
        "pneumoniamnist imbalance=focal folds=5 fold=3 seed=0"
    wide = f"model.widths=[{','.join(['512'] * 60)}]"
    assert len(named("model=resnet_small", wide)) <= 250  # what a database keeps of a run's name


def test_a_sweep_made_under_an_earlier_config_version_is_never_resumed_into(tmp_path, capsys):
    """Config version 2 changed every config hash: resuming a version-1 sweep would find its parent
    and none of its runs, and mix new runs with old ones in one report. It starts a new sweep instead,
    says so, and leaves the old one as it was."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = mlflow.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    definition = {"overrides": ["+sweeps=smoke"], "params": {}}
    old_id = sweep.sweep_id("e", definition, version=1)
    old = mlflow.MlflowClient().create_run(experiment_id, tags={"sweep_id": old_id, "sweep_role": "parent"})

    new = sweep.open_parent("e", sweep.sweep_id("e", definition), definition)
    assert new.id != old_id and new.parent_run_id != old.info.run_id
    assert f"note: sweep {old_id} of this command was made by an earlier pneumo_exp (config version 1)" \
        in capsys.readouterr().out
    assert mlflow.get_run(old.info.run_id).info.status == "RUNNING"  # untouched: as it was left


def all_runs(tmp_path):
    return runs_in(tmp_path / "mlflow.db")


@pytest.mark.long
def test_smoke_sweep_runs_into_a_report_and_resumes_without_new_runs(sweep_cli, tmp_path):
    first = sweep_cli("+sweeps=smoke")
    assert first.returncode == 0, first.stderr[-3000:]
    runs = all_runs(tmp_path)
    parents, children = by_role(runs)
    assert len(parents) == 1 and len(children) == 8  # 2 imbalance x 2 regularization x 2 seeds
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["sweep_id"] for c in children} == {parent.data.tags["sweep_id"]}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert "pneumoniamnist imbalance=focal regularization=none batch_size=8 seed=1" in {
        c.info.run_name for c in children}  # each factor that is not the default, then the seed
    assert len({c.data.tags["cell"] for c in children}) == 4  # what MLflow shows grouping by tag cell
    assert "8 runs made (8 FINISHED), 0 skipped" in first.stdout
    assert first.stdout.count("open the MLflow UI: mlflow ui --backend-store-uri sqlite:") == 8
    assert first.stdout.count("then its runs table: http://127.0.0.1:5000/#/experiments/1/runs?"
                              "workflowType=machine_learning") == 8
    for child in children:  # in MLflow's Model training pages, not its GenAI ones
        assert (f"or this run's page: http://127.0.0.1:5000/#/experiments/1/runs/{child.info.run_id}"
                "?workflowType=machine_learning") in first.stdout
    assert (f"its parent run in the MLflow UI: http://127.0.0.1:5000/#/experiments/1/runs/"
            f"{parent.info.run_id}?workflowType=machine_learning") in first.stdout

    note = parent.data.tags["mlflow.note.content"]  # the run's description in MLflow: the report's answer
    assert "\n\nWhich answer to class imbalance? Against imbalance=none" in note
    assert note.endswith("The full report: Artifacts, report/report.html.")
    assert parent.data.params["varied.imbalance"] == "focal, none"
    assert parent.data.params["varied.regularization"] == "bn_dropout, none"
    assert {"best_cell_test_auc", "baseline_test_auc"} <= metrics_of(parent).keys()
    assert parent.data.tags["best_cell"].startswith("imbalance=")
    parent_now = mlflow.get_run(parent.info.run_id)  # the runs table's Dataset and Source columns
    assert {d.dataset.name for d in parent_now.inputs.dataset_inputs} == {
        f"pneumoniamnist-{split}" for split in ("train", "val", "test")}
    assert parent.data.tags["mlflow.source.name"].endswith("__main__.py")
    logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=parent.info.run_id,
                                                              artifact_path="report")}
    assert {"report/report.md", "report/report.html", "report/metrics.png", "report/roc.png",
            "report/val_auc.png"} <= logged
    text = (tmp_path / "sweep" / "report" / "report.md").read_text()
    for cell in ("imbalance=focal regularization=bn_dropout", "imbalance=none regularization=none"):
        assert f"| {cell} | 2 |" in text
    assert "Paired comparison with baseline `imbalance=none regularization=bn_dropout`" in text
    assert "python -m pneumo_exp -m imbalance=focal regularization=none +sweeps=smoke" in text

    again = sweep_cli("+sweeps=smoke")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 runs made (none), 8 skipped" in again.stdout
    assert len(all_runs(tmp_path)) == len(runs)  # nothing new: every cell had FINISHED

    # The report is a pure function of the store: regenerating it gives the same bytes.
    report.main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(tmp_path / "r"),
                 "--no-log"])
    assert (tmp_path / "r" / "report.md").read_text() == text


@pytest.mark.parametrize("sweep", [["data.image_size=32,16"], ["seed=0,-5"],
                                   ["+sweeps=smoke", "train.learning_rate=0.001,inf"]])
def test_a_bad_value_in_any_job_stops_the_sweep_before_the_first_job(sweep_cli, tmp_path, sweep):
    result = sweep_cli(*sweep, "train.epochs=1")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert re.match(r"error: (data\.image_size=16|seed=-5|train\.learning_rate=inf) is invalid", line)
    assert all_runs(tmp_path) == []  # no job ran, no parent run was opened


@pytest.mark.long
def test_a_crashed_job_fails_alone_and_the_sweep_still_reports(sweep_cli, tmp_path):
    result = sweep_cli("seed=0,1", "train.epochs=1", "data.image_size=32", env=crashing(tmp_path, "0"))
    assert result.returncode == 1
    assert "2 runs made (1 FAILED, 1 FINISHED)" in result.stdout
    assert "error: 1 of the sweep's runs did not finish" in result.stderr
    status = {role: sorted(r.info.status for r in all_runs(tmp_path) if r.data.tags["sweep_role"] == role)
              for role in ("child", "parent")}
    assert status == {"child": ["FAILED", "FINISHED"], "parent": ["FAILED"]}
    assert (tmp_path / "sweep" / "report" / "report.md").is_file()


# A store made by pneumo_exp at commit ef61ab3, before issue 41 changed what a run logs (run names,
# tags, metric names, the predictions table): `python -m pneumo_exp -m imbalance=none,focal seed=0,1
# data.path=tiny.npz data.md5=MD5 *QUIET tracking.uri=sqlite:///mlflow.db tracking.artifact_location=
# artifacts` in /tmp/oldstore, with the run of focal, seed 1 then set FAILED so that there is one to redo.
STORE_BEFORE_41 = PROJECT / "tests" / "data" / "store_before_issue41.tar.gz"
OLD_FOLDER, OLD_MD5, OLD_SWEEP = "/tmp/oldstore", "14d03159d3d6856076ebfdbc318b8e42", "53d9877c2a"


def unpack_old_store(folder) -> str:
    """The old store unpacked into `folder`, its artifact paths moved there as a copied store's
    would be; returns its URI."""
    with tarfile.open(STORE_BEFORE_41) as archive:
        archive.extractall(folder, filter="data")
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                   (OLD_FOLDER, str(folder)))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (OLD_FOLDER, str(folder)))
    return f"sqlite:///{folder}/mlflow.db"


@pytest.mark.long
def test_a_store_made_before_issue_41_still_reports_and_resumes(tmp_path, tiny_npz):
    path, md5 = tiny_npz
    assert md5 == OLD_MD5, "tests/helpers.xray changed: remake the old store as STORE_BEFORE_41 says"
    shutil.copy(path, tmp_path / "tiny.npz")
    uri = unpack_old_store(tmp_path)
    report.main(["--tracking-uri", uri, "--out", str(tmp_path / "before"), "--no-log"])
    text = (tmp_path / "before" / "report.md").read_text()
    assert "| imbalance=none | 2 |" in text and "| imbalance=focal | 1 |" in text

    # The same command resumes its sweep: only the FAILED cell runs again, then the report is redone.
    result = cli("-m", "imbalance=none,focal", "seed=0,1", "data.path=tiny.npz", f"data.md5={md5}", *QUIET,
                 f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep {OLD_SWEEP}: 1 runs made (1 FINISHED), 3 skipped" in result.stdout
    parents, children = by_role(runs_in(uri))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FAILED", *["FINISHED"] * 4]
    assert "| imbalance=focal | 2 |" in (tmp_path / "sweep" / "report" / "report.md").read_text()
