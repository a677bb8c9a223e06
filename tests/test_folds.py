"""Cross-validation by patient (data.folds, data.fold): folds that keep patients whole, are stratified,
validate every pooled patient once, and are the same in every process; the report of a
cross-validated sweep (out-of-fold pooling, the corrected resampled t-test)."""

import csv
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo_exp import UserError, predict
from pneumo_exp.config import check
from pneumo_exp.data import load
from pneumo_exp.data.folder import split_files
from pneumo_exp.data.splits import fold_split
from pneumo_exp.report import answer, seeds
from pneumo_exp.report import folds as report_folds
from pneumo_exp.report.runs import label_cells, load_predictions, provenance_table
from pneumo_exp.report.seeds import METRICS
from tests.helpers import (
    PROJECT,
    TINY,
    by_role,
    chest_data_cfg,
    cli,
    make_config,
    runs_in,
    store_overrides,
    write_kaggle_layout,
)


def pooled_patients(patients: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patients of 1-4 images each, a quarter of them normal."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, patients)
    groups = np.repeat([f"person{i}" for i in range(patients)], sizes)
    labels = np.repeat((np.arange(patients) % 4 != 0).astype(int), sizes)
    return groups, labels


def test_folds_keep_patients_whole_validate_each_once_and_are_stratified():
    groups, labels = pooled_patients()
    validated = []
    for fold in range(5):
        train, val = fold_split(groups, labels, 5, fold, seed=3)
        assert not set(groups[train]) & set(groups[val])
        assert sorted(np.r_[train, val]) == list(range(len(groups)))
        assert abs(labels[val].mean() - labels.mean()) < 0.12
        validated += list(val)
    assert sorted(validated) == list(range(len(groups)))


def test_images_without_patients_are_folded_one_by_one_stratified():
    labels = (np.arange(100) % 4 != 0).astype(int)
    validated = [fold_split(np.arange(100), labels, 4, fold, seed=0)[1] for fold in range(4)]
    assert sorted(np.concatenate(validated)) == list(range(100))
    assert all(labels[val].sum() == 19 or labels[val].sum() == 18 for val in validated)


FOLD_IN_A_PROCESS = """
import sys
import numpy as np
sys.path.insert(0, {project!r})
from pneumo_exp.data.splits import fold_split
groups, labels = np.array({groups!r}), np.array({labels!r})
print(",".join(map(str, fold_split(groups, labels, 5, 2, seed=7)[1])))
"""


def test_folds_are_the_same_in_two_processes():
    """Hash randomization differs between processes: a fold must not depend on it."""
    groups, labels = pooled_patients()
    code = FOLD_IN_A_PROCESS.format(project=str(PROJECT), groups=groups.tolist(), labels=labels.tolist())
    found = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONHASHSEED": str(k), "PATH": ""}).stdout for k in (1, 2)]
    assert found[0] == found[1] == ",".join(map(str, fold_split(groups, labels, 5, 2, seed=7)[1])) + "\n"


def test_a_folder_run_validates_on_its_fold_and_keeps_its_test(tmp_path):
    root = write_kaggle_layout(tmp_path, patients=12, with_test=True)
    folds = [split_files(chest_data_cfg(root, "data.folds=3", f"data.fold={k}")) for k in range(3)]
    assert all(f.files["test"] == folds[0].files["test"] for f in folds)
    validated = [path for f in folds for path in f.files["val"]]
    assert sorted(validated) == sorted(folds[0].files["train"] + folds[0].files["val"])
    data = load(chest_data_cfg(root, "data.folds=3", "data.fold=1", "data.cache_dir=null"))
    assert len(data.val.labels) == len(folds[1].files["val"])


@pytest.mark.parametrize("overrides, key", [
    (["data.folds=1"], "data.folds"),
    (["data.folds=5", "data.fold=5"], "data.fold"),
    (["data.fold=1"], "data.fold"),
    (["data.folds=5", "data.fold=-1"], "data.fold"),
])
def test_a_fold_outside_the_folds_is_one_line(overrides, key):
    with pytest.raises(UserError, match=rf"^{key}=\S+ is invalid: [^\n]+$"):
        check(make_config(overrides))


def test_more_folds_than_patients_of_a_class_is_one_line():
    groups, labels = pooled_patients(patients=12)
    with pytest.raises(UserError, match=r"^data\.folds=5 needs at least 5 patients of each class"):
        fold_split(groups, labels, 5, 0, seed=0)


def validation_of_each_fold(k: int = 5) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Every pooled image (name, label) and what each fold's run logs as val_predictions.csv."""
    groups, labels = pooled_patients()
    images = pd.DataFrame({"image": [f"train/{g}/{i}.jpeg" for i, g in enumerate(groups)], "label": labels})
    folds = [images.iloc[fold_split(groups, labels, k, fold, seed=0)[1]].assign(probability=0.5)
             for fold in range(k)]
    return images, folds


def test_out_of_fold_pooling_scores_every_training_image_once():
    images, folds = validation_of_each_fold()
    oof = report_folds.pooled(folds)
    assert sorted(oof["image"]) == sorted(images["image"]) and not oof["image"].duplicated().any()
    with pytest.raises(UserError, match="is in two folds' validation"):
        report_folds.pooled([folds[0], folds[0]])


def cv_runs(aucs: dict[str, list[float]]) -> pd.DataFrame:
    """Runs of a cross-validated sweep: one per imbalance method and fold (seed 0)."""
    rows = [{"tags.data": "d", "tags.imbalance": imbalance, "params.seed": "0", "seed": 0,
             "params.data.folds": str(len(values)), "params.data.fold": str(fold),
             **{f"metrics.{m}": auc for m in METRICS}}
            for imbalance, values in aucs.items() for fold, auc in enumerate(values)]
    return label_cells(pd.DataFrame(rows))


def test_a_cross_validated_sweep_pairs_cells_by_fold_and_tests_them_corrected():
    runs = cv_runs({"none": [0.80, 0.82, 0.81, 0.84, 0.80], "focal": [0.81, 0.85, 0.83, 0.88, 0.80]})
    assert sorted(runs["cell"].unique()) == ["imbalance=focal", "imbalance=none"]  # folds name no cell
    c = seeds.compare(runs, "imbalance=none")["imbalance=focal"]["test_auc"]
    assert c.diff == pytest.approx([0.01, 0.03, 0.02, 0.04, 0.00])
    assert c.p == pytest.approx(0.1324189, abs=1e-6) and c.unit == "folds"
    lead = answer.answer("imbalance=none", seeds.compare(runs, "imbalance=none"), {})[0]
    assert "corrected resampled t-test over the folds (Nadeau & Bengio 2003)" in lead


@pytest.mark.long
def test_a_cross_validated_sweep_reports_its_folds_and_predicts_with_their_mean(tiny_npz, tmp_path):
    """3 folds on the tiny npz: each fold run FINISHED with its validation predictions, the report's
    cross-validation section, and predict with the sweep's id scoring the npz's test images as the
    mean of the fold runs' own test predictions, at the out-of-fold threshold."""
    path, md5 = tiny_npz
    result = cli("-m", "+sweeps=cv", "data.folds=3", f"data.path={path}", f"data.md5={md5}", *TINY,
                 "tracking.log_figures=false", *store_overrides(tmp_path),
                 f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent, children = by_role(runs_in(uri))
    assert sorted(c.data.params["data.fold"] for c in children) == ["0", "1", "2"]
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "## Cross-validation" in report and "out-of-fold AUC [95% CI]" in report

    (tmp_path / "test").mkdir()
    with np.load(path) as npz:
        for i, image in enumerate(npz["test_images"]):
            Image.fromarray(image).save(tmp_path / "test" / f"{i:02d}.png")
    sweep_id = parent[0].data.tags["sweep_id"]
    predict.main([sweep_id, str(tmp_path / "test"), "--out", str(tmp_path / "p.csv"), "--tracking-uri", uri])
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    own = np.mean([load_predictions(c.info.run_id)[:, 1] for c in children], axis=0)
    assert np.allclose([float(r["probability"]) for r in rows], own, atol=1e-5)
    written = (tmp_path / "p.csv").read_text()
    predict.main([parent[0].info.run_id, str(tmp_path / "test"), "--out", str(tmp_path / "p.csv"),
                  "--tracking-uri", uri])  # the sweep named by its parent run; its own CSV replaced
    assert (tmp_path / "p.csv").read_text() == written


def test_a_cross_validated_cell_is_reproduced_by_one_command_over_its_folds():
    runs = cv_runs({"none": [0.80, 0.82, 0.81], "focal": [0.81, 0.85, 0.83]})
    runs["tags.overrides"] = [f"data.fold={f} +sweeps=cv data.folds=3 imbalance={i}"
                              for f, i in zip(runs["fold"], runs["tags.imbalance"], strict=True)]
    runs["tags.git_commit"], runs["tags.data_fingerprint"], runs["tags.git_dirty"] = "c", "d", "false"
    command = provenance_table(runs)[1][0][1]
    assert command == ("`python -m pneumo_exp -m +sweeps=cv data.folds=3 imbalance=focal seed=0 "
                       "data.fold=0,1,2`")
