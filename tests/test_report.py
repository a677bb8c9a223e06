import base64
import io
import math
import re
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo_exp import report
from pneumo_exp.report import answer, figures, markup, paired, per_image, seeds, summary
from pneumo_exp.report import runs as report_runs
from pneumo_exp.report.runs import label_cells, provenance_table
from pneumo_exp.report.seeds import METRICS, mean_ci
from tests.helpers import empty_store


def png_bytes() -> bytes:
    """A real 2 x 2 PNG, as a report figure."""
    buffer = io.BytesIO()
    Image.new("L", (2, 2)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()


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
    _, rows = seeds.paired_table(seeds.compare(runs, "imbalance=none"))
    assert rows[0][:2] == ["imbalance=focal", "3"]
    diffs = np.array([0.05, 0.06, 0.06])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(3))
    expected_p = 1 - t / math.sqrt(t**2 + 2)  # two-sided p of Student's t with 2 df, closed form
    assert rows[0][2].startswith(f"{diffs.mean():+.3f} ± {diffs.std(ddof=1):.3f}")
    assert float(rows[0][2].split("p=")[1].split()[0]) == pytest.approx(expected_p, abs=5e-4)


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
    pytest.param(["--tracking-uri", STORE, "--experiment", "pneumo"],
                 "error: the store sqlite:///{tmp}/mlflow.db has no experiment 'pneumo': pass --experiment "
                 "with one it has (Default, pneumo_exp)", id="no such experiment"),
    pytest.param(["--tracking-uri", STORE, "--sweep", "s2"],
                 "error: experiment 'pneumo_exp' has no run of sweep s2: pass --sweep with the id a sweep "
                 "printed as it started, or leave it out for the newest sweep", id="no such sweep"),
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
        report.main([*(arg.format(tmp=tmp_path) for arg in args), "--no-log"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(line.format(tmp=tmp_path))  # after MLflow's own log lines
    assert "Traceback" not in err and not (tmp_path / "none.db").exists()


def test_a_filter_that_matches_none_of_a_sweeps_runs_says_so(tmp_path, capsys):
    shutil.copy(empty_store(), tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(STORE.format(tmp=tmp_path))
    run = client.create_run(client.create_experiment("pneumo_exp"),
                            tags={"sweep_id": "s1", "sweep_role": "child", "data": "chest_xray"})
    client.set_terminated(run.info.run_id, "FINISHED")
    with pytest.raises(SystemExit):
        report.main(["--tracking-uri", STORE.format(tmp=tmp_path), "--sweep", "s1", "--filter",
                     "tags.data = 'pneumoniamnist'", "--no-log", "--out", str(tmp_path / "r")])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --filter \"tags.data = 'pneumoniamnist'\" matches none of sweep s1's FINISHED runs: "
        "loosen it, or leave it out")


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


def test_holm_matches_the_textbook_and_never_lowers_a_p_value():
    assert paired.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN stays NaN and is not one of the m comparisons (m = 2 here, not 3)
    adjusted = paired.holm([0.01, math.nan, 0.04])
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx([0.02, 0.04])
    assert paired.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    p = np.random.default_rng(0).uniform(0, 0.2, 15)
    adjusted = paired.holm(p)
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= 0).all()  # monotone: a smaller p never gets a larger adjusted p
    assert not (adjusted == np.minimum(1, p * 15)).all()  # step-down, not Bonferroni


def three_cells() -> pd.DataFrame:
    return label_cells(fake_runs({"none": [0.80, 0.82, 0.84], "focal": [0.85, 0.88, 0.90],
                                  "weights": [0.81, 0.84, 0.84]}))


def test_paired_p_values_are_holm_adjusted_over_the_comparisons_with_the_baseline():
    _, rows = seeds.paired_table(seeds.compare(three_cells(), "imbalance=none"))
    raw = [float(row[2].split("p=")[1].split()[0]) for row in rows]
    holm = [float(row[2].split("(Holm ")[1].rstrip(")")) for row in rows]
    assert [row[0] for row in rows] == ["imbalance=focal", "imbalance=weights"]
    assert holm == pytest.approx(paired.holm(raw), abs=1e-3) and holm != pytest.approx(raw, abs=1e-3)


def test_intervals_of_few_seeds_are_clipped_to_the_metric_range_and_marked():
    mean, sd, lo, hi = mean_ci(np.array([0.5, 0.998]))
    assert lo < 0 and hi > 1  # the bare t-interval of 2 seeds
    assert seeds.fmt(mean, sd, lo, hi) == "0.749 ± 0.352 [0.000*, 1.000*]"
    assert seeds.fmt(*mean_ci(np.array([0.8, 0.9, 1.0]))).endswith("[0.652, 1.000*]")  # only one end
    runs = label_cells(fake_runs({"none": [0.05, 0.95], "focal": [0.95, 0.05]}))
    _, rows = seeds.metric_table(runs, METRICS)
    assert rows[0][2] == "0.500 ± 0.636 [0.000*, 1.000*]"
    _, rows = seeds.paired_table(seeds.compare(runs, "imbalance=none"))
    assert rows[0][2].startswith("+0.000 ± 1.273 [-1.000*, +1.000*] p=")


def with_predictions(runs: pd.DataFrame, monkeypatch, n: int = 80) -> dict[str, np.ndarray]:
    """Give each fake run an id, a threshold and test predictions on one shared set of test images
    (label, probability), served by a stand-in for `runs.load_predictions`."""
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=n) < 0.5).astype(float)
    strength = {"none": 0.5, "focal": 2.0, "weights": 0.8}
    runs["run_id"] = runs["tags.imbalance"] + "-" + runs["seed"].astype(str)
    runs["metrics.threshold"] = [0.5, 0.4, 0.6] * (len(runs) // 3)
    predictions = {row.run_id: np.column_stack([labels, 1 / (1 + np.exp(-(strength[row[
        "tags.imbalance"]] * (2 * labels - 1) + rng.normal(size=n))))]) for _, row in runs.iterrows()}
    monkeypatch.setattr(report_runs, "load_predictions", lambda run_id: predictions[run_id])
    return predictions


def test_predictions_read_alike_from_older_runs_two_columns_and_the_per_image_table(monkeypatch):
    texts = {"runs:/two-column-run/test_predictions.csv": "label,probability\n1,0.93000000\n0,0.12345678\n",
             "runs:/per-image-run/test_predictions.csv": (
                 "image,patient,subtype,label,probability,decision,error\n"
                 '"test/PNEUMONIA/person1_bacteria_1,2.jpeg",person1,bacteria,1,0.93000000,1,\n'
                 "test/NORMAL/IM-0001-0001.jpeg,IM-0001,,0,0.12345678,1,false positive\n")}
    monkeypatch.setattr(mlflow.artifacts, "load_text", texts.__getitem__)
    for run_id in ("two-column-run", "per-image-run"):  # (label, probability), digit for digit
        assert np.array_equal(report_runs.load_predictions(run_id), [[1, 0.93], [0, 0.12345678]]), run_id


def expected_image_tests(runs: pd.DataFrame, predictions: dict, cell: str, baseline: str) -> dict:
    """The image-level tests of `cell` against `baseline` computed straight from `paired`."""
    diffs, delong, mcnemar = [], [], []
    ours = runs[runs["cell"] == cell].set_index("seed")
    theirs = runs[runs["cell"] == baseline].set_index("seed")
    for seed in sorted(set(ours.index) & set(theirs.index)):
        a, b = predictions[ours.loc[seed, "run_id"]], predictions[theirs.loc[seed, "run_id"]]
        auc_a, auc_b, _, p = paired.delong(a[:, 0], a[:, 1], b[:, 1])
        diffs.append(auc_a - auc_b)
        delong.append(p)
        mcnemar.append(paired.mcnemar(a[:, 0], a[:, 1] >= ours.loc[seed, "metrics.threshold"],
                                      b[:, 1] >= theirs.loc[seed, "metrics.threshold"])[2])
    return {"diff": np.mean(diffs), "delong": max(delong), "mcnemar": max(mcnemar),
            "delong_below": sum(p < 0.05 for p in delong), "mcnemar_below": sum(p < 0.05 for p in mcnemar)}


def parse_p(text: str) -> tuple[float, float, int]:
    """(p, Holm p, seeds below 0.05) from `p=… (Holm …); k of n seeds p<0.05`."""
    p, rest = text.removeprefix("p=").split(" (Holm ")
    adjusted, rest = rest.split("); ")
    return float(p), float(adjusted), int(rest.split(" of ")[0])


def test_image_tests_are_delong_and_mcnemar_per_seed_combined_by_the_max_and_holm_adjusted(monkeypatch):
    runs = three_cells()
    predictions = with_predictions(runs, monkeypatch)
    headers, rows = per_image.image_table(per_image.image_tests(runs, "imbalance=none"))
    assert headers == ["cell", "shared seeds", "ΔAUC (mean over seeds)", "DeLong p (max over seeds)",
                       "McNemar p (max over seeds)"]
    assert [row[:2] for row in rows] == [["imbalance=focal", "3"], ["imbalance=weights", "3"]]
    expected = [expected_image_tests(runs, predictions, row[0], "imbalance=none") for row in rows]
    for column, test in ((3, "delong"), (4, "mcnemar")):
        combined = [e[test] for e in expected]
        adjusted = paired.holm(combined)
        assert [row[column] for row in rows] == [
            f"p={paired.p_number(p)} (Holm {paired.p_number(h)}); {e[f'{test}_below']} of 3 seeds p<0.05"
            for p, h, e in zip(combined, adjusted, expected, strict=True)]
    assert [float(row[2]) for row in rows] == pytest.approx([e["diff"] for e in expected], abs=5e-4)
    assert parse_p(rows[0][3])[0] < 0.05  # focal separates the classes far better than none
    assert parse_p(rows[0][3])[1] != pytest.approx(parse_p(rows[0][3])[0])  # adjusted over 2 comparisons


def test_image_tests_skip_a_comparison_whose_runs_scored_different_images(monkeypatch):
    runs = three_cells()
    predictions = with_predictions(runs, monkeypatch)
    predictions["weights-1"] = predictions["weights-1"][::-1].copy()  # same images in another order
    _, rows = per_image.image_table(per_image.image_tests(runs, "imbalance=none"))
    assert rows[1] == ["imbalance=weights", "3", "n/a (not the same test images: labels differ)",
                       "n/a", "n/a"]
    assert parse_p(rows[0][3])[1] == pytest.approx(parse_p(rows[0][3])[0])  # a family of 1: Holm = raw


def as_the_store(runs: pd.DataFrame, monkeypatch) -> None:
    """Serve `runs` as sweep s1's runs, with test predictions and provenance tags, to write_report
    (figures skipped: they need matplotlib and take seconds)."""
    with_predictions(runs, monkeypatch)
    runs["tags.overrides"] = "imbalance=" + runs["tags.imbalance"] + " seed=" + runs["seed"].astype(str)
    runs["tags.data_fingerprint"], runs["tags.git_commit"], runs["tags.git_dirty"] = "md5:x", "c1", "false"
    monkeypatch.setattr(report_runs, "find_runs", lambda *args: runs)
    monkeypatch.setattr(report_runs, "with_artifacts", lambda runs: runs)  # the fake runs have none
    def one_figure(runs, out):
        (out / "metrics.png").write_bytes(PNG)
        return ["metrics.png"]

    monkeypatch.setattr(figures, "draw", one_figure)


def test_report_states_the_holm_family_and_the_clipping_note(tmp_path, monkeypatch):
    as_the_store(three_cells(), monkeypatch)
    text = report.write_report("s1", tmp_path, log=False).read_text()
    assert "Holm-adjusted (Holm 1979, step-down) over the 2 comparisons against the baseline, per metric" \
        in text
    assert "Interval bounds marked * are clipped to the metric's range" in text
    tables = text.split("## Paired tests on the shared test images\n")[1]
    assert "Seeds are combined by taking the largest per-seed p" in tables
    assert "Holm-adjusted over the 2 comparisons against the baseline, per test" in tables
    assert "| cell | shared seeds | ΔAUC (mean over seeds) | DeLong p (max over seeds) |" in tables
    assert text.index("## Paired comparison with baseline") < text.index("## Paired tests on the shared")
    assert text.index("## Answer") < text.index("## Cells")  # the answer comes first
    assert "Which answer to class imbalance? Against imbalance=none, test AUC: focal +0.057" in text
    assert "## Where it fails" in text and "## Extra evaluation sets" not in text  # none was scored
    assert "## Does the answer transfer?" not in text and "internal test" not in text
    assert report.write_report("s1", tmp_path, log=False).read_text() == text  # same bytes again
    page = (tmp_path / "report.html").read_text()  # its figures inside: it reads alone, e.g. in MLflow
    assert f'<img src="data:image/png;base64,{base64.b64encode(PNG).decode()}" alt="metrics.png">' in page
    assert re.findall(r'src="(?!data:)', page) == [] and "](metrics.png)" in text  # the .md links it


def test_report_html_has_a_stylesheet_and_figures_fit_the_page():
    page = markup.render([("title", "t"), ("table", ["a"], [["1"]]), ("img", "roc.png")], markdown=False)
    style = page.split("<style>")[1].split("</style>")[0]
    assert "img{max-width:100%;height:auto" in style  # a 4000 px figure no longer runs off the page
    assert "border-collapse:collapse" in style and "padding:4px 8px" in style and "max-width:80em" in style
    assert "font-family:system-ui" in style and '<img src="roc.png" alt="roc.png">' in page


def two_factor_runs(effect: float) -> pd.DataFrame:
    """A 2 x 2 sweep over 3 seeds: focal raises AUC by `effect` on every seed (a seed-to-seed jitter
    keeps the paired t-test defined), dropping Dropout changes nothing beyond noise."""
    jitter = {0: 0.000, 1: 0.004, 2: -0.003}
    rows = []
    for imbalance in ("none", "focal"):
        for regularization in ("bn_dropout", "bn_only"):
            for seed in range(3):
                auc = 0.80 + 0.02 * seed + (effect + jitter[seed] if imbalance == "focal" else 0)
                auc += 0.003 * ((seed + len(regularization)) % 3 - 1) * (regularization == "bn_only")
                rows.append({"tags.imbalance": imbalance, "tags.regularization": regularization,
                             "tags.data": "d", "params.seed": str(seed), "seed": seed,
                             **{f"metrics.{m}": auc for m in METRICS}})
    return label_cells(pd.DataFrame(rows))


def test_the_answer_names_a_real_effect_and_says_no_evidence_where_there_is_none():
    runs = two_factor_runs(effect=0.05)
    base = "imbalance=none regularization=bn_dropout"
    comparisons = seeds.compare(runs, base)
    delong = {cell: {"delong_holm": 0.5} for cell in comparisons}
    delong["imbalance=none regularization=bn_only"]["delong_holm"] = 0.001
    lead, imbalance, regularization = answer.answer(base, comparisons, delong)
    assert "Holm-adjusted p below 0.05 in the paired t-test over seeds" in lead
    focal = comparisons["imbalance=focal regularization=bn_dropout"]["test_auc"]
    assert imbalance.startswith("Which answer to class imbalance? Against imbalance=none (with "
                                "regularization=bn_dropout), test AUC: focal +0.050 (Holm p=")
    assert f"(Holm p={paired.p_number(focal.holm)} over 3 seeds; DeLong Holm p=0.500)" in imbalance
    assert "Evidence of a difference in test AUC for focal." in imbalance and focal.holm < 0.05
    # the cell that changes both factors answers neither question
    assert "focal regularization=bn_only" not in imbalance + regularization
    assert regularization.startswith("BatchNorm with Dropout, or not? Against regularization=bn_dropout "
                                     "(with imbalance=none), test AUC: bn_only ")
    assert "No evidence of a difference in test AUC." in regularization
    assert "On the test images every shared seed's pair of models differs for bn_only (DeLong, Holm p < " \
        "0.05), but the seeds do not confirm it" in regularization and "On the test images" not in imbalance
    null = answer.answer(base, seeds.compare(two_factor_runs(effect=0.0), base), {})
    assert all("No evidence of a difference in test AUC." in text for text in null[1:])


def test_where_it_fails_and_extra_sets_are_tabled_per_cell_where_the_runs_logged_them():
    runs = three_cells()
    runs["metrics.test_brier"], runs["metrics.test_ece"] = 0.1, np.linspace(0.01, 0.09, 9)
    for count, value in (("tp", 300), ("fp", 50), ("tn", 184), ("fn", 90)):
        runs[f"metrics.test_{count}"] = value
    runs["metrics.test_fn"] = [90, 92, 94] * 3
    headers, rows = seeds.failure_table(runs)
    # no recall_virus column: no run logged one
    assert headers == ["cell", "n", "brier", "ece", "TP / FP / TN / FN (mean)"]
    assert rows[0][0] == "imbalance=focal" and rows[0][-1] == "300.0 / 50.0 / 184.0 / 92.0"
    assert rows[0][3] == seeds.fmt(*mean_ci(np.array([0.01, 0.02, 0.03])))  # focal: the first 3 runs
    assert report_runs.extra_sets(runs) == []
    runs["params.data.extra_eval.site_b"] = "/data/site_b"
    runs["metrics.extra_site_b_auc"] = [0.7, 0.72, 0.74] * 3
    assert report_runs.extra_sets(runs) == ["site_b"]
    headers, rows = seeds.extra_table(runs, "site_b")
    assert headers == ["cell", "n", "auc"] and rows[0][2] == seeds.fmt(*mean_ci(np.array([0.7, 0.72, 0.74])))


def test_p_values_keep_their_size_in_print():
    printed = [paired.p_number(p) for p in (0.5, 0.0012, 0.00024, 0.0)]
    assert printed == ["0.500", "0.001", "2.4e-04", "<1e-300"]


def test_a_difference_the_same_on_every_seed_gets_no_t_test():
    """2 more normals of 188 called right on each of 3 seeds: the floats differ in the last bits, and a
    t-test would read that as p ~ 1e-28."""
    right = [150, 151, 152]
    runs = label_cells(fake_runs({"none": [n / 188 for n in right],
                                  "weights": [(n + 2) / 188 for n in right]}))
    comparison = seeds.compare(runs, "imbalance=none")["imbalance=weights"]["test_specificity"]
    assert np.ptp(comparison.diff) > 0  # the rounding the test is about
    assert math.isnan(comparison.p) and math.isnan(comparison.holm)
    _, rows = seeds.paired_table(seeds.compare(runs, "imbalance=none"))
    assert rows[0][2].endswith("(the same on every seed: no t-test)")


def test_report_figures_overlay_each_cells_curves_and_calibration_banded_over_its_runs(tmp_path, monkeypatch):
    from types import SimpleNamespace

    runs = three_cells()
    with_predictions(runs, monkeypatch)
    epochs = {run_id: [0.7, 0.8, 0.85][:2 + seed % 2]  # runs that stopped early: curves of two lengths
              for run_id, seed in zip(runs["run_id"], runs["seed"], strict=True)}

    def history(run_id: str, key: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(step=step, value=value) for step, value in enumerate(epochs[run_id])]

    monkeypatch.setattr(mlflow, "MlflowClient", lambda: SimpleNamespace(get_metric_history=history))
    assert figures.draw(runs, tmp_path) == ["metrics.png", "roc.png", "calibration.png", "val_auc.png"]
    for name in ("metrics.png", "roc.png", "calibration.png", "val_auc.png"):
        with Image.open(tmp_path / name) as image:  # report.html shows it 900 px wide: hardly shrunk
            assert 800 <= image.width <= 1000, name


def test_calibration_and_roc_bands_span_the_runs_around_their_mean():
    # bin [0, 0.1): run 1 has one pneumonia image in two, run 2 none in one; bin [0.9, 1]: run 1 only
    runs = [np.array([[0, 0.05], [1, 0.05], [1, 0.95]]), np.array([[0, 0.02]])]
    ax = figures.cell_calibration({"cell a": runs}).axes[0]
    assert "min to max" in ax.get_title()
    (line,) = [line for line in ax.get_lines() if line.get_label() == "cell a (2 runs)"]
    assert np.allclose(line.get_xydata(), [[0.04, 0.25], [0.95, 1.0]])  # pooled mean p; mean of fractions
    (band,) = ax.collections
    corners = {tuple(vertex) for vertex in band.get_paths()[0].vertices.round(6)}
    assert {(0.04, 0.0), (0.04, 0.5), (0.95, 1.0)} <= corners
    # a perfect run and its mirror image: mean curve 0.5 between the ends, band 0 to 1, mean AUC 0.5
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    mirrored = [np.column_stack([labels, scores]), np.column_stack([labels, 1 - scores])]
    ax = figures.cell_rocs({"cell b": mirrored}).axes[0]
    (line,) = [line for line in ax.get_lines() if line.get_label() == "cell b (2 runs, mean AUC 0.500)"]
    assert np.allclose(line.get_ydata()[1:-1], 0.5)
    low_high = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert (low_high.min(), low_high.max()) == (0.0, 1.0)


def one_cell_three_seeds() -> pd.DataFrame:
    """The quick recipe's runs on the Kermany folder as issue 41 found them: AUC .91, sensitivity .97,
    specificity .51, the official test sharing patient ids with training, the test set flagged shifted."""
    runs = fake_runs({"none": [0.90, 0.91, 0.92]})
    for score, value in (("recall", 0.97), ("specificity", 0.51), ("accuracy", 0.80)):
        runs[f"metrics.test_{score}"] = value
    for score in ("auc", "recall", "specificity", "accuracy"):  # each run's bootstrap: standard error .02
        runs[f"metrics.test_{score}_ci_low"] = runs[f"metrics.test_{score}"] - 0.02 * 1.959964
        runs[f"metrics.test_{score}_ci_high"] = runs[f"metrics.test_{score}"] + 0.02 * 1.959964
    runs = runs.assign(**{"metrics.test_tp": 378, "metrics.test_fp": 115, "metrics.test_tn": 119,
                          "metrics.test_fn": 12, "metrics.final_val_auc": 0.99,
                          "metrics.patients_shared_train_test": 208, "tags.n_test_normal": "234",
                          "tags.n_test_pneumonia": "390", "tags.test_split": "official",
                          "tags.shift_suspected_sets": "test", "tags.augment": "none",
                          "tags.model": "seed_cnn", "params.data.image_size": "64",
                          "params.train.epochs": "5", "params.train.threshold": "sensitivity"})
    return label_cells(runs)


def test_a_one_cell_sweep_opens_with_its_result_operating_point_and_warnings(tmp_path, monkeypatch):
    as_the_store(one_cell_three_seeds(), monkeypatch)
    text = report.write_report("s1", tmp_path, log=False).read_text()
    answer_text = text.split("## Answer\n\n")[1].split("\n## ")[0]
    assert answer_text.startswith("What was scored: seed_cnn at 64 px for 5 epoch(s) on d (imbalance=none, "
                                  "regularization=bn_dropout, augment=none)")
    assert "Result: The sweep's runs (3 runs): test AUC" in answer_text
    # seeds' variance .0001/3 and the test images' .02^2: half-width 1.96 * sqrt(.000433) = .041
    assert "test AUC 0.910 [0.869, 0.951], accuracy 0.800 [0.761, 0.839]" in answer_text
    assert "3% of pneumonia images missed and 49% of normal images called pneumonia" in answer_text
    assert ("(mean 0.500, 0.400 to 0.600 over runs) and the test prevalence 0.625: sensitivity 0.970, "
            "specificity 0.510, PPV 0.767, NPV 0.908") in answer_text
    assert "208 test patient ids also occur in training" in answer_text
    assert "The runs warned that test looked shifted from training" in answer_text
    assert "Validation AUC (0.990) is above test AUC (0.910)" in answer_text
    assert "nothing to compare" not in text and "0 comparisons" not in text  # no empty sections
    assert "## Paired comparison" not in text and "## Marginal effect" not in text


def test_thresholds_that_scatter_over_a_cells_runs_are_warned_of():
    runs = pd.DataFrame({"cell": ["a"] * 3 + ["b"] * 3,
                         "metrics.threshold": [0.4, 0.5, 0.6, 0.033, 0.5, 0.904]})
    (said,) = summary.unstable_thresholds(runs)
    assert said.startswith("The thresholds chosen on validation range from 0.033 to 0.904 over one cell")
    assert summary.unstable_thresholds(runs[runs["cell"] == "a"]) == []  # .2 apart: not said
