"""The report on every evaluation set: the answer per set (internal test and each data.extra_eval set)
and "Does the answer transfer?" (each cell's rank per set, Kendall's tau-b between the rankings), on
fake runs: no training."""

import math

import numpy as np
import pandas as pd
import pytest

from pneumo_exp import report
from pneumo_exp.report import answer, paired, seeds, transfer
from pneumo_exp.report.runs import label_cells
from pneumo_exp.report.seeds import SCORES
from tests.test_report import as_the_store, three_cells

BASE = "imbalance=none"
NOISE = (0.010, -0.012, 0.004)  # class_weight - none, per seed: no direction
CLEAR = (0.080, 0.085, 0.078)  # class_weight - none, per seed: higher on every seed


def two_sets(site_b: dict[str, tuple[float, ...]], extra_columns: dict[str, tuple[float, ...]] | None = None
             ) -> pd.DataFrame:
    """imbalance=none and imbalance=class_weight over 3 seeds, scored on the internal test, where
    class_weight moves every score by NOISE, and on site_b, where it moves each score by
    `site_b.get(score, NOISE)`; `extra_columns` adds metrics (name: class_weight's shift per seed)."""
    rows = []
    for imbalance in ("none", "class_weight"):
        for seed in range(3):
            moved = imbalance == "class_weight"
            row = {"tags.imbalance": imbalance, "tags.data": "d", "params.seed": str(seed), "seed": seed,
                   "params.data.extra_eval.site_b": "/data/site_b"}
            for score in SCORES:
                row[f"metrics.test_{score}"] = 0.80 + 0.02 * seed + moved * NOISE[seed]
                shift = site_b.get(score, NOISE)[seed]
                row[f"metrics.extra_site_b_{score}"] = 0.70 + 0.01 * seed + moved * shift
            for metric, shift in (extra_columns or {}).items():
                row[f"metrics.{metric}"] = 0.60 + moved * shift[seed]
            rows.append(row)
    return label_cells(pd.DataFrame(rows))


def answer_on_sets(runs: pd.DataFrame, images: dict | None = None) -> tuple[str, str]:
    """The answer to the imbalance question, split into its internal-test and site_b parts."""
    extra = {"site_b": seeds.compare(runs, BASE, "extra_site_b_")}
    _, text = answer.answer(BASE, seeds.compare(runs, BASE), images or {}, extra)
    internal, site_b = text.split(" On site_b: ")
    return internal, site_b


def test_compare_runs_on_an_extra_set_by_its_prefix():
    runs = two_sets({"specificity": CLEAR})
    by_metric = seeds.compare(runs, BASE, "extra_site_b_")["imbalance=class_weight"]
    assert list(by_metric) == [f"extra_site_b_{score}" for score in SCORES]
    assert by_metric["extra_site_b_specificity"].diff == pytest.approx(CLEAR)
    assert by_metric["extra_site_b_auc"].diff == pytest.approx(NOISE)
    assert by_metric["extra_site_b_specificity"].p < 0.01 < by_metric["extra_site_b_auc"].p


def test_each_set_is_holm_adjusted_within_its_own_family():
    runs = three_cells()
    runs["params.data.extra_eval.site_b"] = "/data/site_b"
    for score in SCORES:  # site_b reverses which cell gains, seed by seed
        runs[f"metrics.extra_site_b_{score}"] = runs["metrics.test_auc"].to_numpy()[::-1]
    for prefix in ("test_", "extra_site_b_"):
        comparisons = seeds.compare(runs, BASE, prefix)
        raw = [by_metric[f"{prefix}auc"].p for by_metric in comparisons.values()]
        assert [by_metric[f"{prefix}auc"].holm for by_metric in comparisons.values()] == \
            pytest.approx(paired.holm(raw))  # a family of the 2 cells on this set, not of 4 over both
    assert seeds.compare(runs, BASE)["imbalance=focal"]["test_auc"].p != pytest.approx(
        seeds.compare(runs, BASE, "extra_site_b_")["imbalance=focal"]["extra_site_b_auc"].p)


def test_a_seed_not_scored_on_the_extra_set_is_left_out_of_its_pairs():
    runs = two_sets({"specificity": CLEAR})
    unscored = (runs["cell"] == "imbalance=class_weight") & (runs["seed"] == 1)
    runs.loc[unscored, "metrics.extra_site_b_auc"] = np.nan
    by_metric = seeds.compare(runs, BASE, "extra_site_b_")["imbalance=class_weight"]
    assert by_metric["extra_site_b_auc"].diff == pytest.approx([NOISE[0], NOISE[2]])
    assert len(by_metric["extra_site_b_specificity"].diff) == 3


def test_the_answer_finds_evidence_on_site_b_and_none_on_the_internal_test():
    runs = two_sets({"specificity": CLEAR})
    internal, site_b = answer_on_sets(runs)
    on_site_b = seeds.compare(runs, BASE, "extra_site_b_")["imbalance=class_weight"]
    holm = on_site_b["extra_site_b_specificity"].holm
    assert internal.startswith("Which answer to class imbalance? Against imbalance=none, on each evaluation "
                               "set. On the internal test: AUC class_weight +0.001 (Holm p=")
    assert internal.endswith("so no evidence of a difference in AUC; no other metric (accuracy, "
                             "sensitivity, specificity, F1) differs at Holm p < 0.05.")
    assert site_b.startswith("AUC class_weight +0.001 (Holm p=")
    assert site_b.endswith("so no evidence of a difference in AUC; evidence that imbalance=class_weight "
                           f"raises specificity (+0.081, Holm p={paired.p_number(holm)} over 3 seeds).")


def test_a_level_that_moves_several_metrics_on_a_set_is_one_clause():
    _, site_b = answer_on_sets(two_sets({"specificity": CLEAR, "f1": tuple(-d for d in CLEAR)}))
    assert site_b.count("evidence that") == 1
    assert "evidence that imbalance=class_weight raises specificity (+0.081, Holm p=" in site_b
    assert "over 3 seeds), lowers F1 (-0.081, Holm p=" in site_b


def test_the_answer_on_site_b_says_it_rests_on_the_seeds_alone():
    runs = two_sets({"auc": CLEAR})
    lead, _ = answer.answer(BASE, seeds.compare(runs, BASE), {},
                            {"site_b": seeds.compare(runs, BASE, "extra_site_b_")})
    assert "run on the internal test's images only (runs made before 2026-12-06 logged no other set's), " \
        "so on site_b the answer rests on the t-test alone" in lead
    internal, site_b = answer_on_sets(runs, {"imbalance=class_weight": {"delong_holm": 0.5}})
    assert "(Holm p=" in internal and "over 3 seeds; DeLong Holm p=0.500)" in internal
    assert "DeLong" not in site_b and "so evidence of a difference in AUC for class_weight" in site_b


def test_adapted_scores_on_site_b_are_not_taken_for_its_plain_scores():
    # bn-adapted accuracy and AUC differ clearly, the plain ones do not
    runs = two_sets({}, {"extra_site_b_bn_accuracy": CLEAR, "extra_site_b_bn_auc": CLEAR})
    by_metric = seeds.compare(runs, BASE, "extra_site_b_")["imbalance=class_weight"]
    assert "extra_site_b_bn_accuracy" not in by_metric and "extra_site_b_bn_auc" not in by_metric
    _, site_b = answer_on_sets(runs)
    assert "no evidence of a difference in AUC; no other metric" in site_b and "evidence that" not in site_b
    _, rows = transfer.ranking_table(runs, ["site_b"])
    assert [row[3] for row in rows] == [f"{0.71 + np.mean(NOISE):.3f} (1)", "0.710 (2)"]  # plain site_b AUC


def test_without_an_extra_set_the_answer_names_no_set():
    runs = two_sets({"specificity": CLEAR})
    comparisons = seeds.compare(runs, BASE)
    text = answer.answer(BASE, comparisons, {})
    assert text == answer.answer(BASE, comparisons, {}, {})
    assert text[1].startswith("Which answer to class imbalance? Against imbalance=none, test AUC: "
                              "class_weight +0.001 (Holm p=")
    assert "site_b" not in " ".join(text) and "internal" not in " ".join(text)


def ranked(test: dict[str, float], site_b: dict[str, float]) -> pd.DataFrame:
    """One cell per key, 2 seeds each, whose every score averages test[cell] on the internal test
    and site_b[cell] on site_b."""
    rows = [{"tags.imbalance": cell, "params.seed": str(seed), "seed": seed,
             "params.data.extra_eval.site_b": "/data/site_b",
             **{f"metrics.test_{s}": test[cell] + shift for s in SCORES},
             **{f"metrics.extra_site_b_{s}": site_b[cell] + shift for s in SCORES}}
            for cell in test for seed, shift in enumerate((-0.01, 0.01))]
    return label_cells(pd.DataFrame(rows))


def test_the_ranking_table_gives_each_cells_mean_and_rank_on_each_set():
    runs = ranked({"none": 0.80, "focal": 0.90, "weights": 0.85},
                  {"none": 0.75, "focal": 0.60, "weights": 0.70})
    headers, rows = transfer.ranking_table(runs, ["site_b"])
    assert headers == ["cell", "internal test AUC (rank)", "internal test accuracy (rank)",
                       "site_b AUC (rank)", "site_b accuracy (rank)"]
    assert rows == [["imbalance=focal", "0.900 (1)", "0.900 (1)", "0.600 (3)", "0.600 (3)"],
                    ["imbalance=none", "0.800 (3)", "0.800 (3)", "0.750 (1)", "0.750 (1)"],
                    ["imbalance=weights", "0.850 (2)", "0.850 (2)", "0.700 (2)", "0.700 (2)"]]


@pytest.mark.parametrize("site_b, tau, verb, same", [
    pytest.param({"none": 0.70, "focal": 0.80, "weights": 0.75}, 1.0, "agrees", 3, id="same order"),
    pytest.param({"none": 0.80, "focal": 0.70, "weights": 0.75}, -1.0, "does not agree", 0, id="reversed"),
    pytest.param({"none": 0.70, "focal": 0.80, "weights": 0.85}, 1 / 3, "agrees in part", 2,
                 id="one pair swapped"),
])
def test_the_rank_correlation_is_kendalls_tau_between_the_cells_means(site_b, tau, verb, same):
    runs = ranked({"none": 0.80, "focal": 0.90, "weights": 0.85}, site_b)
    by_score = transfer.agreements(runs, "site_b")
    assert by_score["auc"].tau == pytest.approx(tau) and by_score["auc"].cells == 3
    words = (f"{verb} with the internal test's ({same} of 3 pairs of cells in the same order, "
             f"{3 - same} swapped)")
    assert transfer.in_words(by_score["auc"]) == words
    sentence = transfer.section(runs, ["site_b"])[-1][1]
    assert sentence.startswith(f"By AUC the ranking on site_b {words}; by accuracy it {words}.")


def test_with_two_cells_the_rank_correlation_is_not_computed_and_says_why():
    runs = ranked({"none": 0.80, "focal": 0.90}, {"none": 0.85, "focal": 0.70})
    a = transfer.agreements(runs, "site_b")["auc"]
    assert math.isnan(a.tau) and (a.cells, a.same, a.swapped) == (2, 0, 1)
    assert transfer.correlation_row("site_b", "auc", a) == [
        "site_b", "AUC", "2", "not computed: 2 cells (needs 3)", "n/a", "0 / 1"]
    assert "with 2 there is one pair, and tau is +1 or -1 by construction" in transfer.NOTE
    assert transfer.best_cell(runs, "site_b") == " The internal test's best cell by AUC, imbalance=focal, " \
        "ranks 2 of 2 on site_b."


def test_the_report_answers_on_site_b_and_asks_whether_the_answer_transfers(tmp_path, monkeypatch):
    runs = three_cells()
    runs["params.data.extra_eval.site_b"] = "/data/site_b"
    for score in SCORES:
        runs[f"metrics.extra_site_b_{score}"] = runs["metrics.test_auc"] - 0.1
    as_the_store(runs, monkeypatch)
    text = report.write_report("s1", tmp_path, log=False).read_text()
    assert text.index("## Answer") < text.index("## Does the answer transfer?") < text.index("## Cells")
    assert " On the internal test: AUC focal +0.057 (Holm p=" in text
    assert " On site_b: AUC focal +0.057 (Holm p=0.007 over 3 seeds), weights +0.010" in text
    assert "| cell | internal test AUC (rank) | internal test accuracy (rank) | site_b AUC (rank) |" in text
    assert "| site_b | AUC | 3 | +1.000 | 0.333 | 3 / 0 |" in text
    assert "`site_b`, paired with the baseline:\n\n| cell | paired seeds | Δauc |" in text
