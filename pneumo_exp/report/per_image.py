"""The report's paired tests on the shared test images: for each cell against the baseline, on each
seed both share, DeLong's test of the two runs' AUCs and McNemar's of their decisions, combined over
seeds and Holm-adjusted over the cells compared."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pneumo_exp.report import runs as store_runs
from pneumo_exp.report.paired import delong, holm, mcnemar, p_number

TESTS = ("delong", "mcnemar")

IMAGE_TESTS_NOTE = (
    "On each seed both cells share, the two runs are tested on the same test images (their "
    "test_predictions.csv label columns must match, else the comparison is skipped): DeLong's test of "
    "two correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837-845; computed by the "
    "fast algorithm of Sun & Xu 2014, IEEE Signal Process. Lett. 21:1389-1393) and the exact McNemar "
    "test (McNemar 1947; binomial on the discordant images) of the decisions each run made at its own "
    "threshold chosen on validation. ΔAUC is cell - baseline, the mean over those seeds. Seeds are "
    "combined by taking the largest per-seed p (an intersection-union test, Berger 1982: it is below "
    "0.05 only where every shared seed's test is), followed by how many seeds had p < 0.05. (Holm …) is "
    "that combined p Holm-adjusted over the {family} comparison{s} against the baseline, per test. "
    "These tests see the sampling of the test images, not of training; the seed-level t-test above "
    "sees training.")


def decisions(predictions: np.ndarray, threshold: float) -> np.ndarray | None:
    """The run's test decisions at its own validation-chosen threshold (None where none was logged)."""
    return None if threshold is None or math.isnan(threshold) else predictions[:, 1] >= threshold


def seed_tests(ours: pd.Series, theirs: pd.Series) -> dict | None:
    """DeLong's and McNemar's p for one seed's pair of runs, or None where their label columns
    differ: then they did not score the same images and a paired test would pair strangers."""
    a, b = store_runs.load_predictions(ours["run_id"]), store_runs.load_predictions(theirs["run_id"])
    if a.shape != b.shape or not np.array_equal(a[:, 0], b[:, 0]):
        return None
    labels = a[:, 0].astype(int)
    result = {"diff": math.nan, "delong": math.nan, "mcnemar": math.nan}
    if np.bincount(labels, minlength=2).min() >= 2:  # DeLong needs 2 images of each class
        auc_a, auc_b, _, result["delong"] = delong(labels, a[:, 1], b[:, 1])
        result["diff"] = auc_a - auc_b
    ours_decide = decisions(a, ours.get("metrics.threshold"))
    theirs_decide = decisions(b, theirs.get("metrics.threshold"))
    if ours_decide is not None and theirs_decide is not None:
        result["mcnemar"] = mcnemar(labels, ours_decide, theirs_decide)[2]
    return result


def combine_seeds(per_seed: list[dict | None]) -> dict:
    """One comparison's per-seed tests combined: mean ΔAUC, and for each test the largest per-seed p
    (an intersection-union test, Berger 1982: below 0.05 only where every shared seed's test is, so
    it is a valid p without adjusting over seeds) and how many seeds had p < 0.05. NaN where any seed
    lacks the test; `same_images` False where a seed's runs scored different images."""
    combined: dict = {"seeds": len(per_seed), "same_images": None not in per_seed}
    usable = per_seed if per_seed and combined["same_images"] else []
    combined["diff"] = float(np.mean([t["diff"] for t in usable])) if usable else math.nan
    for test in ("delong", "mcnemar"):
        p = np.array([t[test] for t in usable])
        combined[test] = float(p.max()) if len(p) else math.nan
        combined[f"{test}_below"] = int(np.sum(p < 0.05))
    return combined




def image_tests(runs: pd.DataFrame, baseline: str) -> dict[str, dict]:
    """Per cell: its runs tested against the baseline's on each shared seed's test images, combined
    over seeds (see `combine_seeds`), and each test's combined p Holm-adjusted over the cells
    compared (`delong_holm`, `mcnemar_holm`)."""
    base = runs[runs["cell"] == baseline].set_index("replicate")
    results = {}
    for cell, group in runs[runs["cell"] != baseline].groupby("cell", sort=True):
        other = group.set_index("replicate")
        seeds = sorted(set(base.index) & set(other.index))
        results[cell] = combine_seeds([seed_tests(other.loc[s], base.loc[s]) for s in seeds])
    for test in TESTS:
        for result, adjusted in zip(results.values(), holm([r[test] for r in results.values()]), strict=True):
            result[f"{test}_holm"] = float(adjusted)
    return results


def p_text(p: float, adjusted: float, below: int, seeds: int) -> str:
    """`p=… (Holm …); k of n seeds p<0.05`, or n/a where the test could not be run."""
    if math.isnan(p):
        return "n/a"
    return f"p={p_number(p)} (Holm {p_number(adjusted)}); {below} of {seeds} seeds p<0.05"



def image_table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Each cell against the baseline on the shared test images: mean ΔAUC over shared seeds, DeLong's
    and McNemar's combined p and its Holm adjustment over the comparisons against the baseline."""
    rows = []
    for cell, r in results.items():
        if not r["seeds"] or not r["same_images"]:
            why = "no shared seed" if not r["seeds"] else "not the same test images: labels differ"
            rows.append([cell, str(r["seeds"]), f"n/a ({why})", "n/a", "n/a"])
            continue
        diff = "n/a" if math.isnan(r["diff"]) else f"{r['diff']:+.3f}"
        rows.append([cell, str(r["seeds"]), diff] + [p_text(r[t], r[f"{t}_holm"], r[f"{t}_below"], r["seeds"])
                                                     for t in TESTS])
    return ["cell", "shared seeds", "ΔAUC (mean over seeds)", "DeLong p (max over seeds)",
            "McNemar p (max over seeds)"], rows
