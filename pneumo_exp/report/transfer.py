"""Does the answer transfer? Each cell's mean AUC and accuracy over seeds on every evaluation set (the
internal test and each data.extra_eval set), its rank there, and how far each extra set ranks the
cells as the internal test does: an ablation's answer is worth less where it holds on one hospital's
images only.

The rank correlation is Kendall's tau-b (scipy.stats.kendalltau) rather than Spearman's rho: an
ablation has few cells, and tau reads directly as pairs of cells, (pairs in the same order - pairs
swapped) / pairs where no cell ties, so the report can say how many pairs of cells swap order; its
p-value is exact for small samples without ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from pneumo_exp.report.paired import p_number
from pneumo_exp.report.seeds import Table, extra_prefix

RANKED = {"auc": "AUC", "accuracy": "accuracy"}
INTERNAL = "internal test"
MIN_CELLS = 3  # with 2 cells there is one pair: any rank correlation is +1 or -1 by construction
NOTE = ("Each cell's mean over its seeds on each evaluation set, and in brackets its rank there (1 = best; "
        "tied cells share the better rank; n/a where no run of the cell was scored on the set). An answer "
        "transfers where an extra set ranks the cells as the internal test does. The rank correlation is "
        "Kendall's tau-b (scipy.stats.kendalltau) of the cells' means on the internal test and on the extra "
        "set, chosen over Spearman's rho because an ablation has few cells and tau counts pairs of cells: "
        "(pairs in the same order - pairs swapped) / pairs where no cell ties, shown beside it. p is "
        "two-sided, against no association (exact where no two cells tie); with 3 cells even a perfect "
        f"agreement has p = 0.333, so read tau and the pairs, not p alone. Not computed below {MIN_CELLS} "
        "cells: with 2 there is one pair, and tau is +1 or -1 by construction.")


def evaluation_sets(names: list[str]) -> dict[str, str]:
    """Each evaluation set's label and the prefix of its metrics, the internal test first."""
    return {INTERNAL: "test_", **{name: extra_prefix(name) for name in names}}


def cell_means(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Each cell's mean over its seeds of `metric` (NaN where no run was scored on it), rounded so
    that two means equal but for the order of a float sum tie rather than rank apart."""
    column = f"metrics.{metric}"
    values = runs[column] if column in runs else pd.Series(math.nan, index=runs.index)
    return values.astype(float).groupby(runs["cell"], sort=True).mean().round(9)


def ranks(means: pd.Series) -> pd.Series:
    """1 = the best mean; tied cells share the better rank; a NaN mean stays unranked."""
    return means.rank(ascending=False, method="min")


def ranking_table(runs: pd.DataFrame, names: list[str]) -> Table:
    """A row per cell: on each set its mean AUC and accuracy over seeds, each with its rank there."""
    columns = [(f"{label} {words} (rank)", prefix + score) for label, prefix in evaluation_sets(names).items()
               for score, words in RANKED.items()]
    means = {metric: cell_means(runs, metric) for _, metric in columns}
    ranked = {metric: ranks(values) for metric, values in means.items()}
    rows = [[cell] + [entry(means[metric][cell], ranked[metric][cell]) for _, metric in columns]
            for cell in sorted(runs["cell"].unique())]
    return ["cell"] + [header for header, _ in columns], rows


def entry(mean: float, rank: float) -> str:
    """`0.912 (2)`, or n/a where the cell has no score on the set."""
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ({int(rank)})"


@dataclass(frozen=True)
class Agreement:
    """How an extra set ranks the cells by one score, against the internal test's ranking."""
    cells: int  # cells with a mean on both sets
    tau: float  # Kendall's tau-b; nan where not computed (fewer than MIN_CELLS cells, or no spread)
    p: float
    same: int  # pairs of cells in the same order on both sets
    swapped: int  # pairs in the opposite order (a pair tied on either set is neither)


def agreement(internal: pd.Series, extra: pd.Series) -> Agreement:
    """Kendall's tau-b between the cells' means on the two sets, over the cells scored on both."""
    both = pd.concat([internal, extra], axis=1, join="inner").dropna().to_numpy(dtype=float)
    a, b = both[:, 0], both[:, 1]
    i, j = np.triu_indices(len(a), k=1)
    order = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    same, swapped = int(np.sum(order > 0)), int(np.sum(order < 0))
    if len(a) < MIN_CELLS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Agreement(len(a), math.nan, math.nan, same, swapped)
    tau, p = stats.kendalltau(a, b)
    return Agreement(len(a), float(tau), float(p), same, swapped)


def agreements(runs: pd.DataFrame, name: str) -> dict[str, Agreement]:
    """Per ranked score: the extra set `name`'s ranking of the cells against the internal test's."""
    return {score: agreement(cell_means(runs, f"test_{score}"), cell_means(runs, extra_prefix(name) + score))
            for score in RANKED}


def correlation_row(name: str, score: str, a: Agreement) -> list[str]:
    """One line of the correlation table; says why where tau is not computed."""
    if a.cells < MIN_CELLS:
        tau = f"not computed: {a.cells} cell{'s' * (a.cells != 1)} (needs {MIN_CELLS})"
    else:
        tau = "not computed: every cell has the same mean" if math.isnan(a.tau) else f"{a.tau:+.3f}"
    p = "n/a" if math.isnan(a.p) else p_number(a.p)
    return [name, RANKED[score], str(a.cells), tau, p, f"{a.same} / {a.swapped}"]


def in_words(a: Agreement) -> str:
    """Whether one ranking agrees with the internal test's, by the pairs of cells it keeps in order."""
    pairs = a.cells * (a.cells - 1) // 2
    if not pairs:
        return "cannot be compared with the internal test's (fewer than 2 cells scored on both)"
    counts = f"{a.same} of {pairs} pair{'s' * (pairs != 1)} of cells in the same order, {a.swapped} swapped"
    verb = ("agrees" if a.same > 0 and not a.swapped else "agrees in part" if a.same > a.swapped
            else "does not agree")
    return f"{verb} with the internal test's ({counts})"


def best_cell(runs: pd.DataFrame, name: str) -> str:
    """Where the internal test's best cell by AUC stands on the extra set `name` (or nothing where
    it was not scored there)."""
    internal, extra = cell_means(runs, "test_auc"), cell_means(runs, extra_prefix(name) + "auc")
    if internal.isna().all():
        return ""
    best = internal.idxmax()
    if math.isnan(extra[best]):
        return ""
    return (f" The internal test's best cell by AUC, {best}, ranks {int(ranks(extra)[best])} of "
            f"{extra.notna().sum()} on {name}.")


def section(runs: pd.DataFrame, names: list[str]) -> list[tuple]:
    """The section's blocks: the ranking table, the correlations and a sentence per extra set; none
    where the runs were scored on the internal test only."""
    if not names:
        return []
    found = {name: agreements(runs, name) for name in names}
    sentences = [f"By AUC the ranking on {name} {in_words(by_score['auc'])}; by accuracy it "
                 f"{in_words(by_score['accuracy'])}." + best_cell(runs, name)
                 for name, by_score in found.items()]
    rows = [correlation_row(name, score, a)
            for name, by_score in found.items() for score, a in by_score.items()]
    return [("h", "Does the answer transfer?"), ("p", NOTE), ("table", *ranking_table(runs, names)),
            ("table", ["set", "score", "cells", "Kendall's tau-b with the internal test", "p (two-sided)",
                       "pairs of cells: same order / swapped"], rows),
            *[("p", sentence) for sentence in sentences]]
