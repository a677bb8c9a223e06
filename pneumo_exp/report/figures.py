"""The report's figures: a bar per cell for each metric, test ROC curves and validation AUC per
epoch, overlaid per cell."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from pneumo_exp.evaluation import plots
from pneumo_exp.report import runs as store_runs
from pneumo_exp.report.seeds import METRICS, mean_ci


def draw(runs: pd.DataFrame, out: Path) -> list[str]:
    """Bar chart per metric, ROC curves and validation AUC curves overlaid per cell."""
    client = mlflow.MlflowClient()
    summary = {c: {m: mean_ci(g[f"metrics.{m}"].to_numpy()) for m in METRICS}
               for c, g in runs.groupby("cell", sort=True)}
    rocs, curves = {}, {}
    for cell, group in runs.groupby("cell", sort=True):
        rocs[cell] = [store_runs.load_predictions(r) for r in group["run_id"]]
        curves[cell] = [[m.value for m in sorted(client.get_metric_history(r, "val_auc"),
                                                  key=lambda m: m.step)] for r in group["run_id"]]
    made = {"metrics.png": plots.cell_bars(summary, METRICS), "roc.png": plots.cell_rocs(rocs),
            "val_auc.png": plots.cell_curves(curves, "val_auc")}
    for name, figure in made.items():
        plots.save(figure, out / name)
    return list(made)
