"""The answer's first paragraph, for any sweep, one cell included: what was scored and how, the
headline scores with intervals, the operating point, and every warning the runs raised, in words.
A one-cell sweep has nothing to compare, but its reader still needs to know what it found; a sweep
of several cells opens on its baseline and its best cell before comparing them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pneumo_exp.report import runs as store_runs
from pneumo_exp.report.seeds import mean_ci

Z = 1.959964  # the normal's 97.5% point
HEADLINE = {"auc": "AUC", "accuracy": "accuracy", "recall": "sensitivity", "specificity": "specificity"}
INTERVAL_METHOD = (
    "Intervals: 95%, counting both the test images and the training runs. Each run's bootstrap interval "
    "over its test patients gives its standard error (width / 2z); every run is scored on the same images, "
    "so that error does not shrink with more seeds, while the seeds' spread does: variance = mean of the "
    "runs' squared standard errors + seed variance / runs (normal approximation; over the folds of a "
    "cross-validation, the spread's share is (1/runs + 1/(K-1)), as in the corrected t-test).")
VAL_OVERSTATES = 0.03  # validation AUC this far above test AUC is said
THRESHOLD_SPREAD = 0.3  # thresholds of one cell's runs this far apart are said


def column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A metrics.NAME / tags.NAME column, empty where no run logged it."""
    return runs[name] if name in runs else pd.Series(np.nan, index=runs.index)


def interval(runs: pd.DataFrame, metric: str) -> tuple[float, float, float]:
    """(mean, low, high) of `metric` over the runs, as INTERVAL_METHOD says; the seeds' t-interval
    alone where the runs logged no bootstrap bounds."""
    values = column(runs, f"metrics.{metric}").to_numpy(float)
    low, high = (column(runs, f"metrics.{metric}_ci_{end}").to_numpy(float) for end in ("low", "high"))
    mean, ratio = float(np.mean(values)), store_runs.cv_ratio(runs)  # folds: inflated, as the tables
    if np.isnan(low).any() or np.isnan(high).any():
        _, _, lo, hi = mean_ci(values, ratio)
        return mean, lo, hi
    between = float(np.var(values, ddof=1)) * (1 / len(values) + ratio) if len(values) > 1 else 0.0
    half = Z * math.sqrt(float(np.mean(((high - low) / (2 * Z)) ** 2)) + between)
    return mean, max(mean - half, 0.0), min(mean + half, 1.0)


def scored(value: tuple[float, float, float]) -> str:
    mean, lo, hi = value
    return f"{mean:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if not math.isnan(lo) else "")


def recipe(runs: pd.DataFrame) -> str:
    """What one run of the cell is: the network, image size, epochs, choices and threshold rule."""
    p = runs.iloc[0]
    choices = ", ".join(f"{g}={p.get(f'tags.{g}')}" for g in ("imbalance", "regularization", "augment"))
    return (f"{p.get('tags.model')} at {p.get('params.data.image_size')} px for "
            f"{p.get('params.train.epochs')} epoch(s) on {p.get('tags.data')} ({choices}), its threshold "
            f"chosen on validation by the `{p.get('params.train.threshold')}` rule")


def test_set(runs: pd.DataFrame) -> tuple[str, float]:
    """How the test split is described, and its share of pneumonia."""
    first = runs.iloc[0]
    normal, pneumonia = (int(first.get(f"tags.n_test_{kind}", 0) or 0) for kind in ("normal", "pneumonia"))
    total = normal + pneumonia
    source = first.get("tags.test_split", "")
    where = {"official": "the official test split", "held_out_from_train":
             "a test split held out from the training patients"}.get(source, "the test split")
    prevalence = pneumonia / total if total else math.nan
    return f"{where} ({total} images, {pneumonia} pneumonia: prevalence {prevalence:.3f})", prevalence


def scores(runs: pd.DataFrame, prefix: str = "test_") -> str:
    """AUC …, accuracy …, sensitivity …, specificity … of a set, then what the last two mean."""
    values = {score: interval(runs, f"{prefix}{score}") for score in HEADLINE}
    listed = ", ".join(f"{HEADLINE[s]} {scored(v)}" for s, v in values.items())
    missed, false_alarms = 1 - values["recall"][0], 1 - values["specificity"][0]
    return (f"{listed}; that is, {missed:.0%} of pneumonia images missed and {false_alarms:.0%} of normal "
            "images called pneumonia")


def headline(cell: str, runs: pd.DataFrame, one_cell: bool = False) -> str:
    """`cell` (3 runs): its test scores (scores)."""
    name = "The sweep's runs" if one_cell else f"`{cell}`"
    return f"{name} ({len(runs)} run{'s' * (len(runs) != 1)}): test {scores(runs)}"


def on_extra_set(name: str, runs: pd.DataFrame) -> str:
    """The same runs' scores on an extra evaluation set, at the same thresholds."""
    prefix = f"extra_{name}_"
    first = runs.iloc[0]
    counts = {k: first.get(f"metrics.{prefix}{k}", math.nan) for k in ("tp", "fp", "tn", "fn")}
    total = sum(counts.values())
    pneumonia = counts["tp"] + counts["fn"]
    size = f" ({total:.0f} images, prevalence {pneumonia / total:.3f})" if total == total else ""
    return f"On {name}{size}, at the same thresholds: {scores(runs, prefix)}."


def operating_point(runs: pd.DataFrame, prevalence: float) -> str:
    """The threshold chosen on validation and what it gives on the test split, means over runs."""
    t = column(runs, "metrics.threshold")
    tp, fp, tn, fn = (column(runs, f"metrics.test_{k}").to_numpy(float) for k in ("tp", "fp", "tn", "fn"))
    with np.errstate(invalid="ignore", divide="ignore"):  # a run that calls no image normal has no NPV
        ppv, npv = (float(np.mean(r[~np.isnan(r)])) if (~np.isnan(r)).any() else math.nan
                    for r in (tp / (tp + fp), tn / (tn + fn)))
    sensitivity, specificity = (column(runs, f"metrics.test_{k}").mean() for k in ("recall", "specificity"))
    spread = f", {t.min():.3f} to {t.max():.3f} over runs" if len(t) > 1 else ""
    def rate(value: float, undefined: str) -> str:
        return f"{value:.3f}" if not math.isnan(value) else f"undefined ({undefined})"

    return (f"At the threshold chosen on validation (mean {t.mean():.3f}{spread}) and the test prevalence "
            f"{prevalence:.3f}: sensitivity {sensitivity:.3f}, specificity {specificity:.3f}, PPV "
            f"{rate(ppv, 'no image called pneumonia')}, NPV {rate(npv, 'no image called normal')} "
            "(means over runs).")


DATA_PROBLEMS = {"n_duplicates_across_splits": "images were found in two splits",
                 "n_skipped_files": "files were left out as unreadable (each run's data/ lists them)"}


def data_warnings(runs: pd.DataFrame) -> list[str]:
    """What the runs warned of their data: patients in two splits, duplicates, files left out, an
    extra set's patient ids that training carries too."""
    said = []
    for split in ("val", "test"):
        shared = column(runs, f"metrics.patients_shared_train_{split}").max()
        if shared > 0:
            said.append(f"{shared:.0f} {split} patient ids also occur in training: that split is not "
                        "patient-disjoint from training, and its scores may be optimistic.")
    counts = {problem: column(runs, f"metrics.{name}").max() for name, problem in DATA_PROBLEMS.items()}
    said += [f"{count:.0f} {problem}." for problem, count in counts.items() if count > 0]
    suffix = "_patients_shared_train_val"
    for name in (c for c in runs if c.startswith("metrics.extra_") and c.endswith(suffix)):
        if runs[name].max() > 0:
            extra = name.removeprefix("metrics.extra_").removesuffix(suffix)
            said.append(f"{runs[name].max():.0f} patient ids of {extra} also occur in training or "
                        "validation: the same patients, or ids the sources reuse.")
    return said


def unstable_thresholds(runs: pd.DataFrame) -> list[str]:
    """A sentence where one cell's runs chose thresholds more than THRESHOLD_SPREAD apart."""
    spread = runs.groupby("cell")["metrics.threshold"].agg(["min", "max"])
    low, high = spread.loc[(spread["max"] - spread["min"]).idxmax()]
    if high - low <= THRESHOLD_SPREAD:
        return []
    return [f"The thresholds chosen on validation range from {low:.3f} to {high:.3f} over one cell's runs: "
            "validation separates the classes so well that the rule's choice is unstable, and the runs' "
            "decisions differ with it (docs/config.md, operating point)."]


def warnings(runs: pd.DataFrame) -> list[str]:
    """Every warning the runs raised, a sentence each (none: one sentence saying so)."""
    said = []
    shifted = sorted({s.removeprefix("extra_") for sets in column(runs, "tags.shift_suspected_sets").dropna()
                      for s in str(sets).split(",") if s})
    if shifted:
        said.append(f"The runs warned that {', '.join(shifted)} looked shifted from training: scores there "
                    "may not carry over (eval.adapt checks which adaptation applies; eval.labelled uses a "
                    "labelled sample).")
    said += data_warnings(runs)
    said += unstable_thresholds(runs)
    val, test = column(runs, "metrics.final_val_auc").mean(), column(runs, "metrics.test_auc").mean()
    if val - test > VAL_OVERSTATES:
        said.append(f"Validation AUC ({val:.3f}) is above test AUC ({test:.3f}): validation, drawn from the "
                    "training patients' distribution, overstates how the model does on the test images.")
    return said or ["The runs raised no warning (shift, shared patients, duplicates, files left out)."]


def result(found: pd.DataFrame, base: str, extra_sets: list[str]) -> list[str]:
    """The result in words: the baseline cell (the only one, in a one-cell sweep) on the test split
    and on each extra set, and, where another cell has a higher mean test AUC, that cell; then the
    operating point and the warnings."""
    where, prevalence = test_set(found)
    cells = dict(tuple(found.groupby("cell", sort=True)))
    auc = {cell: runs["metrics.test_auc"].mean() for cell, runs in cells.items()}
    best = max(cells, key=lambda c: (auc[c], c == base))  # the baseline, unless another beats it
    runs = cells[base]
    lead = [f"What was scored: {recipe(runs)}; scored once per run on {where}. Result: "
            f"{headline(base, runs, one_cell=len(cells) == 1)}.",
            *(on_extra_set(name, runs) for name in extra_sets)]
    if best != base:
        lead.append(f"The best cell by mean test AUC: {headline(best, cells[best])}.")
    return [" ".join(lead), " ".join([operating_point(runs, prevalence), *warnings(found)]), INTERVAL_METHOD]
