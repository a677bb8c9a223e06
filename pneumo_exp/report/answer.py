"""The report's opening: the sweep's questions answered in words, drawn from the tables below it.

Each factor the sweep varies is a question (the notebook's two: which answer to class imbalance, and
BatchNorm with Dropout or not). It is answered by the cells that differ from the baseline in that
factor alone, so that nothing else changed: their test AUC against the baseline's by the paired
t-test over seeds and by DeLong's test on the shared test images, both Holm-adjusted; then any other
metric whose adjusted p is below ALPHA. "No evidence of a difference" is said where that is what the
numbers say. Where the runs were also scored on extra sets (data.extra_eval), each question is
answered on every set in turn, from that set's own comparisons: a method that wins on the internal
test need not win on another hospital's images, and the reader should see both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pneumo_exp.report.paired import p_number
from pneumo_exp.report.seeds import SCORES, Comparison, extra_prefix, unit_of

ALPHA = 0.05
QUESTIONS = {"imbalance": "Which answer to class imbalance?",
             "regularization": "BatchNorm with Dropout, or not?"}
NAMES = {"auc": "AUC", "accuracy": "accuracy", "recall": "sensitivity", "specificity": "specificity",
         "f1": "F1"}
OTHERS = ", ".join(NAMES[score] for score in SCORES[1:])
LEAD = ("What the tables below say, in words. Each factor the sweep varied is compared through the "
        "cells that differ from the baseline in that factor alone. Evidence of a difference means a "
        f"Holm-adjusted p below {ALPHA} in the paired t-test over seeds, which sees training "
        "variability; DeLong's test on the shared test images is shown beside it.")
CV_LEAD = ("What the tables below say, in words. The sweep cross-validates: each cell was trained once per "
           "fold, and two cells are paired by fold (and seed). Each factor the sweep varied is compared "
           "through the cells that differ from the baseline in that factor alone. Evidence of a difference "
           f"means a Holm-adjusted p below {ALPHA} in the corrected resampled t-test over the folds (Nadeau "
           "& Bengio 2003): the folds' training sets overlap, so their results are correlated, and a plain "
           "paired t-test would be far too confident; the correction inflates the variance of the mean "
           "difference from s²/J to (1/J + 1/(K-1)) s². DeLong's test on the shared test images is shown "
           "beside it.")
EXTRA_LEAD = (" Each question is answered on every evaluation set, the internal test and {names}, from "
              "that set's own scores, Holm-adjusted within the set. DeLong's and McNemar's tests are run "
              "on the internal test's images only (runs made before 2026-12-06 logged no other set's), so "
              "on {names} the answer rests on the t-test alone.")
Comparisons = dict[str, dict[str, Comparison]]


def factors(cell: str) -> dict[str, str]:
    """`imbalance=focal regularization=none` as {"imbalance": "focal", "regularization": "none"}."""
    return dict(part.split("=", 1) for part in cell.split() if "=" in part)


def rivals(baseline: str, cells: list[str], factor: str) -> list[str]:
    """The cells that differ from the baseline in `factor` and in nothing else."""
    base = factors(baseline)
    return [cell for cell in cells
            if {k: v for k, v in factors(cell).items() if k != factor}
            == {k: v for k, v in base.items() if k != factor}]


def auc_item(level: str, c: Comparison, image: dict) -> str:
    """`focal +0.012 (Holm p=0.410 over 3 seeds; DeLong Holm p=0.030)` for one rival."""
    if math.isnan(c.p) and not len(c.diff):
        return f"{level} (no shared seed)"
    if math.isnan(c.p):
        return f"{level} {c.diff.mean():+.3f} (not tested: needs 2 {c.unit} whose differences vary)"
    delong = image.get("delong_holm", math.nan)
    on_images = f"; DeLong Holm p={p_number(delong)}" if not math.isnan(delong) else ""
    return f"{level} {c.diff.mean():+.3f} (Holm p={p_number(c.holm)} over {len(c.diff)} {c.unit}{on_images})"


@dataclass(frozen=True)
class Findings:
    """What one evaluation set says about one question, before it is put in words."""
    factor: str
    items: list[str]  # each rival's AUC against the baseline (see `auc_item`)
    better: list[str]  # the levels whose AUC differs at Holm p < ALPHA
    hits: list[tuple[str, str, Comparison]]  # (level, score, comparison): other scores at Holm p < ALPHA
    images_only: list[str]  # levels DeLong separates on every seed's images but the seeds do not
    unit: str = "seeds"  # what the t-test's differences are over: seeds, or a cross-validation's folds


def findings(found: Comparisons, images: dict[str, dict], factor: str, prefix: str) -> Findings:
    """The rivals' comparisons on the set whose metrics start with `prefix`, sorted into what the
    answer says (`images` is empty where no per-image test was run: every extra set)."""
    level = {cell: factors(cell)[factor] for cell in found}
    auc = {cell: by_metric[prefix + "auc"] for cell, by_metric in found.items()}
    return Findings(
        factor, [auc_item(level[cell], auc[cell], images.get(cell, {})) for cell in found],
        [level[cell] for cell in found if auc[cell].holm < ALPHA],
        [(level[cell], score, c) for score in SCORES[1:] for cell, by_metric in found.items()
         if (c := by_metric[prefix + score]).holm < ALPHA],
        [level[cell] for cell in found
         if images.get(cell, {}).get("delong_holm", 1.0) < ALPHA <= auc[cell].holm],
        unit_of(found))


def images_only(levels: list[str], unit: str = "seeds") -> list[str]:
    """Where DeLong finds a difference on the test images that the seeds (or folds) do not confirm:
    said, so that a reader neither misses it nor takes it for an effect of the method."""
    if not levels:
        return []
    return [f"On the test images every shared {unit[:-1]}'s pair of models differs for {', '.join(levels)} "
            f"(DeLong, Holm p < {ALPHA}), but the {unit} do not confirm it: more seeds would tell whether "
            "it holds across training runs."]


def internal_test_alone(head: str, f: Findings) -> str:
    """The answer where the runs were scored on the internal test only: the set needs no naming."""
    verdict = (f"Evidence of a difference in test AUC for {', '.join(f.better)}." if f.better else
               "No evidence of a difference in test AUC.")
    hits = [f"{NAMES[score]} {level} {c.diff.mean():+.3f} (Holm p={p_number(c.holm)})"
            for level, score, c in f.hits]
    other = (f"At Holm p < {ALPHA}: {'; '.join(hits)}." if hits else
             f"No other test metric ({OTHERS}) differs at Holm p < {ALPHA}.")
    return " ".join([f"{head}, test AUC: {'; '.join(f.items)}.", verdict,
                     *images_only(f.images_only, f.unit), other])


def level_hits(f: Findings) -> list[str]:
    """`evidence that imbalance=focal raises specificity (+0.081, Holm p=0.012 over 3 seeds), lowers
    F1 (…)`: one clause per level, so that a cell that moves every metric reads as one."""
    by_level: dict[str, list[str]] = {}
    for level, score, c in f.hits:
        by_level.setdefault(level, []).append(
            f"{'raises' if c.diff.mean() > 0 else 'lowers'} {NAMES[score]} ({c.diff.mean():+.3f}, "
            f"Holm p={p_number(c.holm)} over {len(c.diff)} {c.unit})")
    return [f"evidence that {f.factor}={level} {', '.join(moves)}" for level, moves in by_level.items()]


def on_set(label: str, f: Findings) -> str:
    """One set's part of the answer where there are several, opening with the set's name."""
    verdict = (f"evidence of a difference in AUC for {', '.join(f.better)}" if f.better else
               "no evidence of a difference in AUC")
    other = level_hits(f) or [f"no other metric ({OTHERS}) differs at Holm p < {ALPHA}"]
    return " ".join([f"On {label}: AUC {', '.join(f.items)}, so {verdict}; {'; '.join(other)}.",
                     *images_only(f.images_only, f.unit)])


def answer_factor(factor: str, baseline: str, comparisons: Comparisons, images: dict[str, dict],
                  extra: dict[str, Comparisons]) -> str:
    """One paragraph: the question, the rivals' AUC against the baseline on each set, the verdicts."""
    base = factors(baseline)
    question = QUESTIONS.get(factor, f"Does {factor} matter?")
    context = " ".join(f"{k}={v}" for k, v in base.items() if k != factor)
    against = f"Against {factor}={base[factor]}" + (f" (with {context})" if context else "")
    cells = rivals(baseline, list(comparisons), factor)
    if not cells:
        return f"{question} No cell differs from the baseline in {factor} alone: see the marginal table."
    internal = findings({cell: comparisons[cell] for cell in cells}, images, factor, "test_")
    if not extra:
        return internal_test_alone(f"{question} {against}", internal)
    on_extra = [on_set(name, findings({cell: by_set[cell] for cell in cells}, {}, factor, extra_prefix(name)))
                for name, by_set in extra.items()]
    return " ".join([f"{question} {against}, on each evaluation set.", on_set("the internal test", internal),
                     *on_extra])


def answer(baseline: str, comparisons: Comparisons, images: dict[str, dict],
           extra: dict[str, Comparisons] | None = None) -> list[str]:
    """The lead and one paragraph per factor that varies, in the order cells are named; `extra` holds
    each extra set's comparisons (seeds.compare with its prefix), by set name."""
    if not comparisons:  # one cell: summary.result says what it found
        return []
    extra = extra or {}
    lead = CV_LEAD if unit_of(comparisons) == "folds" else LEAD
    lead += EXTRA_LEAD.format(names=", ".join(extra)) if extra else ""
    return [lead] + [answer_factor(factor, baseline, comparisons, images, extra)
                     for factor in factors(baseline)]
