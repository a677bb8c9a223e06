"""The report's opening: the sweep's questions answered in words, drawn from the tables below it.

Each factor the sweep varies is a question (the notebook's two: which answer to class imbalance, and
BatchNorm with Dropout or not). It is answered by the cells that differ from the baseline in that
factor alone, so that nothing else changed: their test AUC against the baseline's by the paired
t-test over seeds and by DeLong's test on the shared test images, both Holm-adjusted; then any other
metric whose adjusted p is below ALPHA. "No evidence of a difference" is said where that is what the
numbers say.
"""

from __future__ import annotations

import math

from pneumo_exp.report.paired import p_number
from pneumo_exp.report.seeds import METRICS, Comparison

ALPHA = 0.05
QUESTIONS = {"imbalance": "Which answer to class imbalance?",
             "regularization": "BatchNorm with Dropout, or not?"}
NAMES = {"test_auc": "AUC", "test_accuracy": "accuracy", "test_recall": "sensitivity",
         "test_specificity": "specificity", "test_f1": "F1"}
LEAD = ("What the tables below say, in words. Each factor the sweep varied is compared through the "
        "cells that differ from the baseline in that factor alone. Evidence of a difference means a "
        f"Holm-adjusted p below {ALPHA} in the paired t-test over seeds, which sees training "
        "variability; DeLong's test on the shared test images is shown beside it.")


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
        return f"{level} {c.diff.mean():+.3f} (not tested: needs 2 seeds whose differences vary)"
    delong = image.get("delong_holm", math.nan)
    on_images = f"; DeLong Holm p={p_number(delong)}" if not math.isnan(delong) else ""
    return f"{level} {c.diff.mean():+.3f} (Holm p={p_number(c.holm)} over {len(c.diff)} seeds{on_images})"


def other_metrics(found: dict[str, dict[str, Comparison]], factor: str) -> str:
    """The other metrics where a rival differs from the baseline at Holm p < ALPHA, or that none does."""
    hits = [f"{NAMES[m]} {factors(cell)[factor]} {c.diff.mean():+.3f} (Holm p={p_number(c.holm)})"
            for m in METRICS[1:] for cell, by_metric in found.items()
            if (c := by_metric[m]).holm < ALPHA]
    if not hits:
        others = ", ".join(NAMES[m] for m in METRICS[1:])
        return f"No other test metric ({others}) differs at Holm p < {ALPHA}."
    return f"At Holm p < {ALPHA}: {'; '.join(hits)}."


def answer_factor(factor: str, baseline: str, comparisons: dict[str, dict[str, Comparison]],
                  images: dict[str, dict]) -> str:
    """One paragraph: the question, the rivals' test AUC against the baseline, the verdict."""
    base = factors(baseline)
    question = QUESTIONS.get(factor, f"Does {factor} matter?")
    context = " ".join(f"{k}={v}" for k, v in base.items() if k != factor)
    against = f"Against {factor}={base[factor]}" + (f" (with {context})" if context else "")
    found = {cell: comparisons[cell] for cell in rivals(baseline, list(comparisons), factor)}
    if not found:
        return f"{question} No cell differs from the baseline in {factor} alone: see the marginal table."
    items = [auc_item(factors(cell)[factor], by_metric["test_auc"], images.get(cell, {}))
             for cell, by_metric in found.items()]
    better = [factors(cell)[factor] for cell, by_metric in found.items()
              if by_metric["test_auc"].holm < ALPHA]
    verdict = (f"Evidence of a difference in test AUC for {', '.join(better)}." if better else
               "No evidence of a difference in test AUC.")
    return " ".join([f"{question} {against}, test AUC: {'; '.join(items)}.", verdict,
                     *images_only(found, images, factor), other_metrics(found, factor)])


def images_only(found: dict[str, dict[str, Comparison]], images: dict[str, dict], factor: str) -> list[str]:
    """Where DeLong finds a difference on the test images that the seeds do not confirm: said, so
    that a reader neither misses it nor takes it for an effect of the method."""
    levels = [factors(cell)[factor] for cell, by_metric in found.items()
              if images.get(cell, {}).get("delong_holm", 1.0) < ALPHA <= by_metric["test_auc"].holm]
    if not levels:
        return []
    return [f"On the test images every shared seed's pair of models differs for {', '.join(levels)} "
            f"(DeLong, Holm p < {ALPHA}), but the seeds do not confirm it: more seeds would tell whether "
            "it holds across training runs."]


def answer(baseline: str, comparisons: dict[str, dict[str, Comparison]],
           images: dict[str, dict]) -> list[str]:
    """The lead and one paragraph per factor that varies, in the order cells are named."""
    if not comparisons:
        return ["The sweep has one cell: there is nothing to compare."]
    return [LEAD] + [answer_factor(factor, baseline, comparisons, images) for factor in factors(baseline)]
