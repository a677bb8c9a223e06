"""The report's figures, drawn to be read at the 900 px report.html gives them: each cell's test
metrics, and per cell overlaid its test ROC and calibration curves and its validation AUC per epoch,
each curve the mean over the cell's runs with a band from their minimum to their maximum (a few
seeds make a standard deviation say little; the band shows every run's curve lies inside it)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from pneumo_exp.evaluation import plots
from pneumo_exp.evaluation.measure import ECE_BINS
from pneumo_exp.report import runs as store_runs
from pneumo_exp.report.seeds import METRICS, UNIT, mean_ci

BAND = "mean over the cell's runs, band: their min to max"


def draw(runs: pd.DataFrame, out: Path) -> list[str]:
    """The figures' files, written to `out`: metrics, ROC, calibration and validation AUC per cell."""
    client = mlflow.MlflowClient()
    ratio = store_runs.cv_ratio(runs)  # the tables' intervals, corrected over folds as they are
    summary, predictions, curves = {}, {}, {}
    for cell, group in runs.groupby("cell", sort=True):
        summary[cell] = {m: mean_ci(group[f"metrics.{m}"].to_numpy(), ratio) for m in METRICS}
        predictions[cell] = [store_runs.load_predictions(r) for r in group["run_id"]]
        curves[cell] = [[m.value for m in sorted(client.get_metric_history(r, "val_auc"),
                                                  key=lambda m: m.step)] for r in group["run_id"]]
    made = {"metrics.png": cell_metrics(summary, METRICS), "roc.png": cell_rocs(predictions),
            "calibration.png": cell_calibration(predictions), "val_auc.png": cell_curves(curves, "val_auc")}
    for name, figure in made.items():
        plots.save(figure, out / name)
    return list(made)


def cell_metrics(summary: dict[str, dict[str, tuple[float, float, float, float]]],
                 metrics: tuple[str, ...]) -> Figure:
    """A panel per metric, two to a row: each cell's mean with its 95% confidence interval, on an
    axis spanning the values, so that a difference of a point shows (bars from 0 hid it)."""
    cells = list(summary)[::-1]  # the first cell on top
    rows = -(-len(metrics) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(10, rows * (1.0 + 0.45 * len(cells))), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mean, _, low, high = np.array([summary[c][metric] for c in cells]).T
        low, high = np.clip(low, *UNIT), np.clip(high, *UNIT)  # as the report's tables clip them
        ax.errorbar(mean, np.arange(len(cells)), xerr=np.nan_to_num([mean - low, high - mean]),
                    fmt="o", capsize=4)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(np.arange(len(cells)), ["\n".join(cell.split()) for cell in cells])
    fig.suptitle("Test metrics per cell: mean over its runs, bar: 95% confidence interval (clipped to "
                 f"[{UNIT[0]:g}, {UNIT[1]:g}])")
    fig.tight_layout()
    return fig


def band(ax: Axes, x: np.ndarray, rows: np.ndarray, label: str) -> None:
    """The mean of `rows` (one per run; nan where a run has no value) as a line, their min to max
    shaded; points no run has are left out."""
    kept = ~np.isnan(rows).all(axis=0)
    x, rows = x[kept], rows[:, kept]
    (line,) = ax.plot(x, np.nanmean(rows, axis=0), label=label, marker="." if len(x) < 30 else None)
    ax.fill_between(x, np.nanmin(rows, axis=0), np.nanmax(rows, axis=0), color=line.get_color(),
                    alpha=0.2, linewidth=0)


def overlaid(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (9, 7)) -> tuple[Figure, Axes]:
    """An empty figure for one curve per cell, titled with what its bands show; laid out to keep room
    for a legend below the axes (legend), where it hides no curve."""
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    ax.set(title=f"{title}\n({BAND})", xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def legend(fig: Figure) -> Figure:
    """`fig` with its legend below the axes, one cell a line."""
    fig.legend(loc="outside lower center")
    return fig


def cell_rocs(predictions: dict[str, list[np.ndarray]]) -> Figure:
    """Test ROC per cell: each run's curve (rows of label, probability per test image) read at the
    same false positive rates, then banded; the legend gives the cell's mean AUC."""
    grid = np.linspace(0, 1, 201)
    fig, ax = overlaid("Test ROC per cell", "1 - specificity (false positive rate)",
                       "sensitivity (true positive rate)")
    for cell, runs in predictions.items():
        curves = np.array([np.interp(grid, *roc_curve(run[:, 0], run[:, 1])[:2]) for run in runs])
        auc = np.mean([roc_auc_score(run[:, 0], run[:, 1]) for run in runs])
        band(ax, grid, curves, f"{cell} ({len(runs)} runs, mean AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    return legend(fig)


def calibration_rows(runs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of predicted probability (ECE_BINS equal-width, as the report's ECE): the mean
    probability over all the cell's images in it, and each run's fraction of pneumonia (nan where
    the run has no image in the bin)."""
    bins = [np.minimum((run[:, 1] * ECE_BINS).astype(int), ECE_BINS - 1) for run in runs]
    counts = np.array([np.bincount(b, minlength=ECE_BINS) for b in bins])
    sums = np.array([[np.bincount(b, run[:, column], ECE_BINS) for column in (0, 1)]
                     for b, run in zip(bins, runs, strict=True)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, 1].sum(axis=0) / counts.sum(axis=0), sums[:, 0] / counts


def cell_calibration(predictions: dict[str, list[np.ndarray]]) -> Figure:
    """Reliability per cell on the test images: observed fraction of pneumonia against predicted
    probability, banded over the cell's runs."""
    fig, ax = overlaid(f"Test calibration per cell ({ECE_BINS} equal-width bins)",
                       "mean predicted probability of pneumonia", "fraction pneumonia")
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for cell, runs in predictions.items():
        band(ax, *calibration_rows(runs), f"{cell} ({len(runs)} runs)")
    return legend(fig)


def cell_curves(curves: dict[str, list[list[float]]], metric: str) -> Figure:
    """Per-epoch `metric` per cell, banded over the runs that reached each epoch."""
    fig, ax = overlaid(f"{metric} per epoch", "epoch", metric, size=(9, 5.5))
    for cell, runs in curves.items():
        longest = max(len(run) for run in runs)
        rows = np.array([run + [np.nan] * (longest - len(run)) for run in runs], dtype=float)
        band(ax, np.arange(1, longest + 1), rows, f"{cell} ({len(runs)} runs)")
    return legend(fig)
