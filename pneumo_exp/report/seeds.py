"""The report's statistics over training seeds: each cell's mean ± sd with a t-interval, the marginal
effect of each factor, and each cell against the baseline by a paired t-test over shared seeds with
Holm-adjusted p-values, on any evaluation set (the internal test, or an extra set) by its metrics'
prefix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from pneumo_exp.report.paired import corrected_resampled_t, holm, p_number
from pneumo_exp.report.runs import cv_ratio

SCORES = ("auc", "accuracy", "recall", "specificity", "f1")  # what every evaluation set is scored by
METRICS = tuple(f"test_{score}" for score in SCORES)
UNIT = (0.0, 1.0)  # every metric the tables show is a proportion, an AUC or a calibration error
DIFFERENCE = (-1.0, 1.0)  # a difference of two of them
CLIPPED_NOTE = ("Interval bounds marked * are clipped to the metric's range ([0, 1], or [-1, 1] for a "
                "difference): the t-interval of few seeds can run past it, and the metric cannot.")
Table = tuple[list[str], list[list[str]]]


def set_metrics(prefix: str) -> tuple[str, ...]:
    """An evaluation set's plain scores by its prefix (`test_`, `extra_site_b_`): named one by one,
    so that adapted scores logged beside them (extra_site_b_bn_accuracy, extra_site_b_tent_auc, ...)
    are never taken for them."""
    return tuple(prefix + score for score in SCORES)


def extra_prefix(name: str) -> str:
    """The prefix of the metrics of the extra evaluation set `name` (data.extra_eval.NAME)."""
    return f"extra_{name}_"


def mean_ci(values: np.ndarray, ratio: float = 0.0) -> tuple[float, float, float, float]:
    """Mean, sd and the 95% t-interval of the mean (nan where n < 2); over the folds of a
    cross-validation (ratio = 1/(K-1)) with the variance of the mean inflated to (1/n + ratio) sd^2,
    as the corrected resampled t-test has it (paired.corrected_resampled_t)."""
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd * math.sqrt(1 / n + ratio)
    return mean, sd, mean - half, mean + half


def bound(value: float, limits: tuple[float, float], sign: str = "") -> str:
    """One end of an interval, clipped into the metric's `limits` and marked * where it was: with 2
    seeds a t-interval of an AUC can read [-1.610, 3.108]; the true value lies inside the limits, so
    clipping keeps every interval's coverage and only drops values the metric cannot take."""
    clipped = min(max(value, limits[0]), limits[1])
    return f"{clipped:{sign}.3f}" + ("*" if clipped != value else "")


def fmt(mean: float, sd: float, lo: float, hi: float, signed: bool = False,
        limits: tuple[float, float] = UNIT) -> str:
    """`mean ± sd [lo, hi]` with the interval clipped into `limits` (see `bound`), or the mean alone
    where there is no spread (one seed)."""
    sign = "+" if signed else ""
    text = f"{mean:{sign}.3f}"
    if not math.isnan(sd):
        text += f" ± {sd:.3f} [{bound(lo, limits, sign)}, {bound(hi, limits, sign)}]"
    return text


def present(runs: pd.DataFrame, metrics: list[str] | tuple[str, ...]) -> list[str]:
    """The metrics some run of the sweep logged (recall_virus only where file names tell the kind)."""
    return [m for m in metrics if f"metrics.{m}" in runs and runs[f"metrics.{m}"].notna().any()]


def metric_table(runs: pd.DataFrame, metrics: list[str] | tuple[str, ...], prefix: str = "test_") -> Table:
    """Each cell's `metrics` over its seeds: mean ± sd and the 95% t-interval of the mean; the
    column headers drop `prefix`."""
    ratio = cv_ratio(runs)
    rows = [[cell, str(len(group))] + [fmt(*mean_ci(group[f"metrics.{m}"].dropna().to_numpy(), ratio))
                                       for m in metrics]
            for cell, group in runs.groupby("cell", sort=True)]
    return ["cell", "n"] + [m.removeprefix(prefix) for m in metrics], rows


FAILURES = ("test_brier", "test_ece", "test_recall_bacteria", "test_recall_virus")
COUNTS = ("test_tp", "test_fp", "test_tn", "test_fn")
EXTRA = ("auc", "accuracy", "recall", "specificity", "f1", "brier", "ece")


def failure_table(runs: pd.DataFrame) -> Table:
    """Where each cell fails: calibration (Brier, ECE), recall on bacterial and on viral pneumonia
    (where the file names say which) and the operating point's confusion counts, mean over seeds."""
    headers, rows = metric_table(runs, present(runs, FAILURES))
    if present(runs, COUNTS) == list(COUNTS):
        counts = runs.groupby("cell", sort=True)[[f"metrics.{c}" for c in COUNTS]].mean()
        for row, cell_counts in zip(rows, counts.itertuples(index=False), strict=True):
            row.append(" / ".join(f"{count:.1f}" for count in cell_counts))
        headers.append("TP / FP / TN / FN (mean)")
    return headers, rows


def extra_table(runs: pd.DataFrame, name: str) -> Table:
    """Each cell's scores on the extra evaluation set `name` (data.extra_eval), over its seeds."""
    prefix = extra_prefix(name)
    return metric_table(runs, present(runs, [prefix + m for m in EXTRA]), prefix=prefix)


def marginal_table(runs: pd.DataFrame) -> Table:
    """Each level of each factor, averaged over the cells of the other factors."""
    cell_means = runs.groupby("cell")[[f"metrics.{m}" for m in METRICS]].mean()
    rows = []
    levels = sorted({part for cell in cell_means.index for part in cell.split(" ")})
    for level in levels if len(cell_means) > 1 else []:
        chosen = cell_means[[level in cell.split(" ") for cell in cell_means.index]]
        rows.append([level, str(len(chosen))] + [fmt(*mean_ci(chosen[f"metrics.{m}"].to_numpy()))
                                                  for m in METRICS])
    return ["factor level", "cells"] + [m.removeprefix("test_") for m in METRICS], rows


def paired_p(ours: np.ndarray, theirs: np.ndarray, ratio: float = 0.0) -> float:
    """Two-sided paired t-test p over seeds, or over the folds (and seeds) of a cross-validation the
    corrected resampled t-test's (ratio = 1/(K-1)); nan with fewer than 2 seeds or where the difference
    is the same on every seed (e.g. 2 more normals called right each time): the t statistic is then
    undefined, and the rounding of the metrics' floats would otherwise read as p = 1e-28 from 3 seeds."""
    diff = ours - theirs
    if ratio:
        return corrected_resampled_t(diff, ratio)
    if len(diff) < 2 or np.ptp(diff) < 1e-9:
        return math.nan
    return float(stats.ttest_rel(ours, theirs).pvalue)


@dataclass(frozen=True)
class Comparison:
    """One cell against the baseline on one metric, over the seeds both share."""
    diff: np.ndarray  # cell - baseline, per shared seed (per fold and seed in a cross-validation)
    p: float  # two-sided paired t-test (nan with fewer than 2 seeds or no spread: see `paired_p`)
    holm: float  # p Holm-adjusted over every cell's comparison with the baseline on this metric
    ratio: float = 0.0  # the corrected t-test's 1/(K-1) over K folds; 0: the plain one over seeds

    @property
    def unit(self) -> str:
        """What its differences are over, as the report says it."""
        return "folds" if self.ratio else "seeds"


def paired_scores(ours: pd.DataFrame, theirs: pd.DataFrame, metric: str,
                  ratio: float = 0.0) -> tuple[np.ndarray, float]:
    """`metric` of a cell minus the baseline's (both indexed by replicate: seed, or fold and seed) on
    the replicates both were scored on, and the paired t-test's p (corrected over folds: `paired_p`):
    a run without an extra set has NaN there, and is left out."""
    column, none = f"metrics.{metric}", pd.Series(dtype=float)
    both = pd.concat([ours.get(column, none), theirs.get(column, none)], axis=1, join="inner")
    both = both.dropna().sort_index().to_numpy(dtype=float)
    return both[:, 0] - both[:, 1], paired_p(both[:, 0], both[:, 1], ratio)


def compare(runs: pd.DataFrame, baseline: str, prefix: str = "test_") -> dict[str, dict[str, Comparison]]:
    """Per cell and metric of one evaluation set (`prefix`: test_, or extra_NAME_): the paired t-test
    against the baseline, adjusted (Holm) per metric over the cells compared: the family a reader
    scans at once, within each set (a set is its own question, answered on its own)."""
    metrics, ratio = set_metrics(prefix), cv_ratio(runs)
    base = runs[runs["cell"] == baseline].set_index("replicate")
    raw = {cell: {m: paired_scores(group.set_index("replicate"), base, m, ratio) for m in metrics}
           for cell, group in runs[runs["cell"] != baseline].groupby("cell", sort=True)}
    adjusted = {m: holm([raw[cell][m][1] for cell in raw]) for m in metrics}
    return {cell: {m: Comparison(*raw[cell][m], float(adjusted[m][i]), ratio) for m in metrics}
            for i, cell in enumerate(raw)}


def described(folds: int) -> tuple[str, str, str]:
    """What the tables' replicates are, how their intervals are corrected and which t-test pairs
    them, in words: seeds and the paired t-test, or a cross-validation's folds and the corrected one."""
    if not folds:
        return "seeds", "", "a two-sided paired t-test over seeds (scipy.stats.ttest_rel)"
    return ("folds (and seeds)", ", its variance corrected for the folds' overlap",
            f"the corrected resampled t-test over folds (Nadeau & Bengio 2003: variance (1/J + "
            f"1/{folds - 1}) s², J - 1 degrees of freedom; the folds' training sets overlap, so a plain "
            "paired t-test would be far too confident)")


def unit_of(comparisons: dict[str, dict[str, Comparison]]) -> str:
    """"folds" where the comparisons are over a cross-validation's folds, else "seeds"."""
    return next(iter(next(iter(comparisons.values())).values())).unit if comparisons else "seeds"


def paired_table(comparisons: dict[str, dict[str, Comparison]], prefix: str = "test_") -> Table:
    """Each cell minus the baseline on the seeds both share: mean difference, 95% CI (clipped to
    [-1, 1]), paired t-test p and its Holm adjustment; `prefix` names the evaluation set."""
    rows = []
    for cell, by_metric in comparisons.items():
        row = [cell, str(len(by_metric[prefix + SCORES[0]].diff))]
        for c in by_metric.values():
            if len(c.diff) < 2:
                row.append(f"n/a (needs 2 {c.unit})")
                continue
            tests = (f" p={p_number(c.p)} (Holm {p_number(c.holm)})" if not math.isnan(c.p)
                     else f" (the same on every {c.unit[:-1]}: no t-test)")
            row.append(fmt(*mean_ci(c.diff, c.ratio), signed=True, limits=DIFFERENCE) + tests)
        rows.append(row)
    return ["cell", f"paired {unit_of(comparisons)}"] + [f"Δ{score}" for score in SCORES], rows
