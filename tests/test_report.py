import math

import numpy as np
import pandas as pd
import pytest

from pneumo_exp.report import METRICS, label_cells, main, mean_ci, paired_table, provenance_table


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


def test_a_store_without_sweeps_is_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--no-log"])
    assert exit_.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after MLflow's own log lines
    assert last_line.startswith("error: no sweep in experiment 'pneumo_exp': run one with")


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
