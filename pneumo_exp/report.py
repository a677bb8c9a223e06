"""`python -m pneumo_exp.report`: an ablation report read back from the MLflow store.

One row per cell (a config without its seed) with mean ± sd and 95% confidence intervals over seeds,
the marginal effect of each factor, paired comparisons against a baseline cell, figures, and the
command, commit and data behind every cell. Reads only the store, so anyone holding it regenerates
a byte-identical report.md.
"""

from __future__ import annotations

import argparse
import html
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from scipy import stats

from pneumo_exp import (
    UserError,
    config,
    file_in_the_way,
    one_line_errors,
    plots,
    store,
    store_uri_default,
    sweep,
)

METRICS = ("test_auc", "test_accuracy", "test_recall", "test_specificity", "test_f1")
FACTORS = ("data", "model", "imbalance", "regularization", "augment", "train")  # in cell-name order
DEFAULT_CELL = {"regularization": "bn_dropout", "imbalance": "none"}


def newest_sweep(experiment: str) -> str:
    """The id of the sweep started last in `experiment`: the report's default."""
    parents = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.sweep_role = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if parents.empty:
        raise UserError(f"no sweep in experiment {experiment!r}: run one with "
                        "`python -m pneumo_exp -m +sweeps=smoke` or pass --sweep ID")
    return str(parents["tags.sweep_id"].iloc[0])


def search_with_filter(experiment: str, query: str, filter_string: str) -> pd.DataFrame:
    """The runs matching `query` and the user's --filter, newest first; a --filter MLflow cannot
    parse is a UserError naming it (MLflow says what is wrong, not where the text came from)."""
    try:
        return mlflow.search_runs(experiment_names=[experiment],
                                  filter_string=" and ".join(filter(None, [query, filter_string])),
                                  order_by=["attributes.start_time DESC"])
    except mlflow.exceptions.MlflowException as error:
        if not filter_string or error.error_code != "INVALID_PARAMETER_VALUE":
            raise
        reason = str(error).strip().splitlines()[0]
        raise UserError(f"--filter {filter_string!r} is not an MLflow search filter ({reason}): write "
                        "KEY OP 'VALUE' clauses joined by `and`, e.g. --filter \"tags.data = 'chest_xray'\" "
                        "(see MLflow's search syntax)") from error


def find_runs(sweep_id: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """The sweep's FINISHED runs, the newest one per config (a forced rerun replaces the older)."""
    query = f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'child' and attributes.status = 'FINISHED'"
    runs = search_with_filter(experiment, query, filter_string)
    if runs.empty:
        raise UserError(f"sweep {sweep_id} has no FINISHED run in experiment {experiment!r}")
    runs = runs.drop_duplicates(["tags.config_hash"]).copy()
    runs["seed"] = runs["params.seed"].astype(int)
    return runs


def label_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Name each cell by the factors that vary across the runs: group choices, then single values
    within a group whose choice is fixed (e.g. imbalance.gamma across focal runs)."""
    groups = [f for f in FACTORS if f"tags.{f}" in runs and runs[f"tags.{f}"].nunique() > 1]
    varying = [f"tags.{f}" for f in groups]
    varying += [c for c in sorted(runs) if c.startswith("params.") and c != "params.seed"
                and c.split(".")[1] not in groups and config.changes_results(c.split(".", 1)[1])
                and runs[c].nunique(dropna=False) > 1]
    names = [c.split(".", 1)[1] for c in varying]
    runs["cell"] = [" ".join(f"{n}={v}" for n, v in zip(names, row, strict=True)) or "all runs"
                    for row in runs[varying].itertuples(index=False)]
    return runs.sort_values(["cell", "seed"]).reset_index(drop=True)


def mean_ci(values: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, sd and the 95% t-interval of the mean (nan where n < 2)."""
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def fmt(mean: float, sd: float, lo: float, hi: float, signed: bool = False) -> str:
    """`mean ± sd [lo, hi]`, or the mean alone where there is no spread (one seed)."""
    sign = "+" if signed else ""
    text = f"{mean:{sign}.3f}"
    if not math.isnan(sd):
        text += f" ± {sd:.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"
    return text


def cell_table(runs: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Each cell's test metrics over its seeds: mean ± sd and the 95% confidence interval."""
    rows = [[cell, str(len(group))] + [fmt(*mean_ci(group[f"metrics.{m}"].to_numpy())) for m in METRICS]
            for cell, group in runs.groupby("cell", sort=True)]
    return ["cell", "n"] + [m.removeprefix("test_") for m in METRICS], rows


def marginal_table(runs: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Each level of each factor, averaged over the cells of the other factors."""
    cell_means = runs.groupby("cell")[[f"metrics.{m}" for m in METRICS]].mean()
    rows = []
    levels = sorted({part for cell in cell_means.index for part in cell.split(" ")})
    for level in levels if len(cell_means) > 1 else []:
        chosen = cell_means[[level in cell.split(" ") for cell in cell_means.index]]
        rows.append([level, str(len(chosen))] + [fmt(*mean_ci(chosen[f"metrics.{m}"].to_numpy()))
                                                  for m in METRICS])
    return ["factor level", "cells"] + [m.removeprefix("test_") for m in METRICS], rows


def pick_baseline(runs: pd.DataFrame, baseline: str | None) -> str:
    """The cell matching `baseline` ("k=v k=v"; a factor that does not vary matches anything)."""
    wanted = [w.split("=", 1) for w in baseline.split()] if baseline else DEFAULT_CELL.items()
    cells = sorted(runs["cell"].unique())
    for cell in cells:
        parts = dict(part.split("=", 1) for part in cell.split() if "=" in part)
        if all(parts.get(key, value) == value for key, value in wanted):
            return cell
    if baseline:
        raise UserError(f"--baseline {baseline!r} matches no cell: choose one of {cells}")
    return cells[0]


def paired_table(runs: pd.DataFrame, baseline: str) -> tuple[list[str], list[list[str]]]:
    """Each cell minus the baseline on the seeds both share: mean difference, 95% CI, paired t-test."""
    base = runs[runs["cell"] == baseline].set_index("seed")
    rows = []
    for cell, group in runs[runs["cell"] != baseline].groupby("cell", sort=True):
        other = group.set_index("seed")
        seeds = sorted(set(base.index) & set(other.index))
        row = [cell, str(len(seeds))]
        for m in METRICS:
            diff = (other.loc[seeds, f"metrics.{m}"] - base.loc[seeds, f"metrics.{m}"]).to_numpy()
            if len(seeds) < 2:
                row.append("n/a (needs 2 seeds)")
                continue
            p = stats.ttest_rel(other.loc[seeds, f"metrics.{m}"], base.loc[seeds, f"metrics.{m}"]).pvalue
            row.append(fmt(*mean_ci(diff), signed=True) + (f" p={p:.3f}" if not math.isnan(p) else ""))
        rows.append(row)
    return ["cell", "paired seeds"] + [f"Δ{m.removeprefix('test_')}" for m in METRICS], rows


def provenance_table(runs: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """How to reproduce each cell (command, commits, data) and what would stop it reproducing."""
    rows = []
    for cell, group in runs.groupby("cell", sort=True):
        overrides = [o for o in group["tags.overrides"].iloc[0].split() if not o.startswith("seed=")]
        seeds = ",".join(str(s) for s in sorted(group["seed"]))
        command = f"python -m pneumo_exp {'-m ' if len(group) > 1 else ''}{' '.join(overrides)} seed={seeds}"
        commits = sorted(group["tags.git_commit"].unique())
        data = sorted(group["tags.data_fingerprint"].unique())
        flags = [w for w, bad in (("MIXED COMMITS", len(commits) > 1), ("MIXED DATA", len(data) > 1),
                                  ("uncommitted changes", (group["tags.git_dirty"] == "true").any()),
                                  ("commit unknown", (group["tags.git_commit"] == "unknown").any()))
                 if bad]
        rows.append([cell, f"`{command}`", " ".join(c[:10] for c in commits), " ".join(data),
                     ", ".join(flags) or "ok"])
    return ["cell", "command", "git commit", "data fingerprint", "check"], rows


def figures(runs: pd.DataFrame, out: Path) -> list[str]:
    """Bar chart per metric, ROC curves and validation AUC curves overlaid per cell."""
    client = mlflow.MlflowClient()
    summary = {c: {m: mean_ci(g[f"metrics.{m}"].to_numpy()) for m in METRICS}
               for c, g in runs.groupby("cell", sort=True)}
    rocs, curves = {}, {}
    for cell, group in runs.groupby("cell", sort=True):
        rocs[cell] = [np.loadtxt(mlflow.artifacts.load_text(f"runs:/{r}/test_predictions.csv")
                                 .splitlines(), delimiter=",", skiprows=1) for r in group["run_id"]]
        curves[cell] = [[m.value for m in sorted(client.get_metric_history(r, "val_auc"),
                                                  key=lambda m: m.step)] for r in group["run_id"]]
    made = {"metrics.png": plots.cell_bars(summary, METRICS), "roc.png": plots.cell_rocs(rocs),
            "val_auc.png": plots.cell_curves(curves, "val_auc")}
    for name, figure in made.items():
        plots.save(figure, out / name)
    return list(made)


def render(blocks: list[tuple], markdown: bool) -> str:
    """Blocks ("h", text) / ("p", text) / ("table", headers, rows) / ("img", file) as md or html."""
    out = []
    for kind, *body in blocks:
        if kind == "title":
            out.append(f"# {body[0]}\n" if markdown else f"<h1>{html.escape(body[0])}</h1>")
        elif kind == "h":
            out.append(f"## {body[0]}\n" if markdown else f"<h2>{html.escape(body[0])}</h2>")
        elif kind == "p":
            out.append(f"{body[0]}\n" if markdown else f"<p>{html.escape(body[0])}</p>")
        elif kind == "img":
            out.append(f"![{body[0]}]({body[0]})\n" if markdown else f'<img src="{body[0]}" alt="{body[0]}">')
        elif markdown:
            headers, rows = body
            lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            out.append("\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n")
        else:
            headers, rows = body
            head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip('`'))}</td>" for c in r) + "</tr>"
                            for r in rows)
            out.append(f"<table><tr>{head}</tr>{cells}</table>")
    if markdown:
        return "\n".join(out)
    style = "body{font-family:sans-serif;max-width:70em}td,th{border:1px solid #ccc;padding:2px 6px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" + \
        "\n".join(out) + "</body></html>\n"


def write_report(sweep_id: str, out: Path, experiment: str = "pneumo_exp",
                 baseline: str | None = None, filter_string: str = "", log: bool = True) -> Path:
    """Write report.md, report.html and figures to `out`; log them to the sweep's parent run."""
    runs = label_cells(find_runs(sweep_id, experiment, filter_string))
    base = pick_baseline(runs, baseline)
    out.mkdir(parents=True, exist_ok=True)
    images = figures(runs, out)
    cells = runs["cell"].nunique()
    blocks = [
        ("title", f"Ablation report: sweep {sweep_id}, experiment {experiment}"),
        ("p", f"{len(runs)} FINISHED runs in {cells} cells. Metrics are on each run's test split, "
              "thresholded ones at the threshold each run chose on validation; mean ± sd over seeds, "
              "[95% t-interval of the mean]."),
        ("h", "Cells"), ("table", *cell_table(runs)),
        ("h", "Marginal effect of each factor (mean over cells of the other factors)"),
        ("table", *marginal_table(runs)),
        ("h", f"Paired comparison with baseline `{base}`"),
        ("p", "Difference cell - baseline on matching seeds: mean ± sd [95% CI]; p from a two-sided "
              "paired t-test over seeds (scipy.stats.ttest_rel)."),
        ("table", *paired_table(runs, base)),
        ("h", "Figures"), *[("img", name) for name in images],
        ("h", "Reproduce each cell"), ("table", *provenance_table(runs)),
    ]
    (out / "report.md").write_text(render(blocks, markdown=True))
    (out / "report.html").write_text(render(blocks, markdown=False))
    parent = sweep.find_parent(experiment, sweep_id) if log else None
    if parent:
        mlflow.MlflowClient().log_artifacts(parent.info.run_id, str(out), "report")
    return out / "report.md"


def check_out(out: Path) -> None:
    """--out is the report's folder, made (with its parents) where missing: a file at that path or
    above it would stop that only after the runs were searched and the figures drawn."""
    blocking = file_in_the_way(out)
    if blocking == out.absolute():
        raise UserError(f"--out {out} is a file: pass a folder for the report (made if missing)")
    if blocking is not None:
        raise UserError(f"--out {out} is below {blocking}, which is a file: pass a folder for the report "
                        "(made if missing)")


def main(argv: list[str] | None = None) -> None:
    """The command line; a UserError is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m pneumo_exp.report", description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", help="sweep id (printed when a sweep starts; tag sweep_id); "
                        "default: the newest sweep")
    parser.add_argument("--experiment", default="pneumo_exp", help="MLflow experiment (default pneumo_exp)")
    parser.add_argument("--tracking-uri", default=store_uri_default())
    parser.add_argument("--baseline", help="cell to compare against, e.g. 'imbalance=none "
                        "regularization=bn_dropout' (default: those, where present)")
    parser.add_argument("--filter", default="", help="extra MLflow filter, e.g. \"tags.data = 'chest_xray'\"")
    parser.add_argument("--out", type=Path, help="output folder, made if missing (default reports/SWEEP_ID)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = parser.parse_args(argv)
    with one_line_errors():
        check_out(args.out or Path("reports"))  # before the store is read
        store.open_for_reading(args.tracking_uri)
        sweep_id = args.sweep or newest_sweep(args.experiment)
        path = write_report(sweep_id, args.out or Path("reports") / sweep_id, args.experiment,
                            args.baseline, args.filter, log=not args.no_log)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
