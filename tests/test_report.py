import math
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest

from pneumo_exp.report import METRICS, label_cells, main, mean_ci, paired_table, provenance_table
from tests.helpers import empty_store


def test_mean_ci_is_the_t_interval():
    mean, sd, lo, hi = mean_ci(np.array([0.8, 0.9, 1.0]))
    assert (mean, sd) == pytest.approx((0.9, 0.1))
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 df) * sd / sqrt(n)
    assert (lo, hi) == pytest.approx((0.9 - half, 0.9 + half))
    assert all(math.isnan(v) for v in mean_ci(np.array([0.7]))[1:])


def fake_runs(aucs: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for imbalance, values in aucs.items():
        for seed, auc in enumerate(values):
            rows.append({"tags.data": "d", "tags.model": "m", "tags.regularization": "bn_dropout",
                         "tags.train": "default", "tags.imbalance": imbalance, "params.seed": str(seed),
                         "params.imbalance.gamma": "2.0" if imbalance == "focal" else None, "seed": seed,
                         **{f"metrics.{m}": auc for m in METRICS}})
    return pd.DataFrame(rows)


def test_cells_are_named_by_what_varies_and_compared_pairwise():
    runs = fake_runs({"none": [0.80, 0.82, 0.84], "focal": [0.85, 0.88, 0.90]})
    # a sweep finished with another launcher: how its jobs ran names no cell
    runs["params.launcher.jobs"] = ["1", "2"] * 3
    runs["params.train.intra_op_threads"] = ["2", "1"] * 3
    runs = label_cells(runs)
    assert sorted(runs["cell"].unique()) == ["imbalance=focal", "imbalance=none"]  # gamma follows the group
    _, rows = paired_table(runs, "imbalance=none")
    assert rows[0][:2] == ["imbalance=focal", "3"]
    diffs = np.array([0.05, 0.06, 0.06])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(3))
    expected_p = 1 - t / math.sqrt(t**2 + 2)  # two-sided p of Student's t with 2 df, closed form
    assert rows[0][2].startswith(f"{diffs.mean():+.3f} ± {diffs.std(ddof=1):.3f}")
    assert float(rows[0][2].split("p=")[1]) == pytest.approx(expected_p, abs=5e-4)


def test_an_augmentation_sweep_names_its_cells_by_the_choice():
    runs = fake_runs({"none": [0.80, 0.82, 0.84]})
    runs["tags.augment"] = ["none", "xray", "none"]
    runs["params.augment.shift"] = [None if a == "none" else "0.05" for a in runs["tags.augment"]]
    assert sorted(label_cells(runs)["cell"].unique()) == ["augment=none", "augment=xray"]


STORE, NO_STORE = "sqlite:///{tmp}/mlflow.db", "sqlite:///{tmp}/none.db"


@pytest.mark.parametrize("args, line", [
    pytest.param(["--tracking-uri", STORE], "error: no sweep in experiment 'pneumo_exp': run one with",
                 id="no sweep"),
    pytest.param(["--tracking-uri", NO_STORE], "error: no MLflow store at {tmp}/none.db: pass --tracking-uri",
                 id="no store"),
    pytest.param(["--tracking-uri", "sqlit:///x.db"],
                 "error: tracking URI 'sqlit:///x.db' has the unknown scheme 'sqlit': use", id="bad scheme"),
    pytest.param(["--tracking-uri", "sqlite:///{tmp}/garbage.db"],
                 "error: {tmp}/garbage.db is not a readable SQLite database (file is not a database)",
                 id="corrupt store"),
    pytest.param(["--tracking-uri", STORE, "--sweep", "s1", "--filter", "tags.data = "],
                 "error: --filter 'tags.data = ' is not an MLflow search filter (Invalid clause(s) in filter "
                 "string: 'tags.data', '='): write KEY OP 'VALUE' clauses joined by `and`, e.g. "
                 "--filter \"tags.data = 'chest_xray'\" (see MLflow's search syntax)", id="bad filter"),
    # the store does not exist either: --out is checked first
    pytest.param(["--tracking-uri", NO_STORE, "--out", "{tmp}/file"],
                 "error: --out {tmp}/file is a file: pass a folder for the report (made if missing)",
                 id="out is a file"),
    pytest.param(["--tracking-uri", NO_STORE, "--out", "{tmp}/file/report"],
                 "error: --out {tmp}/file/report is below {tmp}/file, which is a file: pass a folder for the "
                 "report (made if missing)", id="out below a file"),
])
def test_bad_report_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, line):
    shutil.copy(empty_store(), tmp_path / "mlflow.db")
    mlflow.MlflowClient(STORE.format(tmp=tmp_path)).create_experiment("pneumo_exp")  # or no filter is read
    (tmp_path / "garbage.db").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        main([*(arg.format(tmp=tmp_path) for arg in args), "--no-log"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(line.format(tmp=tmp_path))  # after MLflow's own log lines
    assert "Traceback" not in err and not (tmp_path / "none.db").exists()


def test_provenance_flags_what_makes_a_cell_hard_to_reproduce():
    runs = label_cells(fake_runs({"none": [0.80, 0.82, 0.84], "focal": [0.85, 0.88, 0.90]}))
    runs["tags.overrides"] = "imbalance=" + runs["tags.imbalance"] + " seed=" + runs["seed"].astype(str)
    runs["tags.data_fingerprint"] = "md5:x"
    runs["tags.git_commit"] = ["c1", "c1", "c1", "c1", "c1", "unknown"]
    runs["tags.git_dirty"] = ["false", "false", "true", "false", "false", "unknown"]
    _, rows = provenance_table(runs)
    checks = {row[0]: row[-1] for row in rows}
    assert checks == {"imbalance=focal": "uncommitted changes",
                      "imbalance=none": "MIXED COMMITS, commit unknown"}
    assert rows[0][1] == "`python -m pneumo_exp -m imbalance=focal seed=0,1,2`"
