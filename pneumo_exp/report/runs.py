"""The report's runs, read back from the MLflow store: the sweep's FINISHED runs, named by cell (the
factors that vary), the baseline cell, each run's test predictions, and how to reproduce a cell."""

from __future__ import annotations

import functools
import sys

import mlflow
import numpy as np
import pandas as pd

from pneumo_exp import UserError, config
from pneumo_exp.tracking import names

FACTORS = ("data", "model", "imbalance", "regularization", "augment", "train")  # in cell-name order
DEFAULT_CELL = {"regularization": "bn_dropout", "imbalance": "none"}
REPLICATES = ("params.seed", "params.data.fold")  # what repeats a cell, never what names one
REPLICATE_KEYS = ("seed=", "data.fold=")  # their overrides


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
    if runs.empty and filter_string and not search_with_filter(experiment, query, "").empty:
        raise UserError(f"--filter {filter_string!r} matches none of sweep {sweep_id}'s FINISHED runs: "
                        "loosen it, or leave it out")
    if runs.empty:
        raise nothing_finished(sweep_id, experiment)
    runs = metric_columns_in_code(runs.drop_duplicates(["tags.config_hash"]).copy())
    runs["seed"] = runs["params.seed"].astype(int)
    return runs


def metric_columns_in_code(runs: pd.DataFrame) -> pd.DataFrame:
    """`metrics.NAME` columns by the code's names (tracking/names.py): a sweep resumed across the
    change holds runs of both, each score in one column."""
    for column in [c for c in runs if c.startswith("metrics.")]:
        name = f"metrics.{names.in_code(column.removeprefix('metrics.'))}"
        if name != column:
            runs[name] = runs[column].combine_first(runs[name]) if name in runs else runs[column]
            runs = runs.drop(columns=column)
    return runs


def nothing_finished(sweep_id: str, experiment: str) -> UserError:
    """Why a sweep has no run to report: none at all (a mistyped id), or none FINISHED."""
    runs = search_with_filter(experiment, f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'child'", "")
    if runs.empty:
        return UserError(f"experiment {experiment!r} has no run of sweep {sweep_id}: pass --sweep with the "
                         "id a sweep printed as it started, or leave it out for the newest sweep")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(runs["status"].value_counts().items()))
    return UserError(f"sweep {sweep_id} has no FINISHED run in experiment {experiment!r} ({counts}): run "
                     "the sweep's command again to finish them (each FAILED run's error tag says why)")


def with_artifacts(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose predictions the report reads are still there: a run whose artifacts were
    deleted (by hand, with a lost disk) is left out with a warning, so the others still report."""
    needed = {"test_predictions.csv", *(["val_predictions.csv"] if folds(runs) else [])}
    lost = runs[[not needed <= {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id)}
                 for run_id in runs["run_id"]]]
    files, where = " and ".join(sorted(needed)), lost["artifact_uri"].iloc[0] if len(lost) else ""
    if len(lost) == len(runs):
        raise UserError(f"none of the sweep's {len(runs)} FINISHED runs has its {files} any more (e.g. "
                        f"{where}): restore their artifact folders, or run the sweep again with "
                        "tracking.rerun=true")
    if len(lost):
        print(f"warning: {len(lost)} of the sweep's FINISHED runs lack their {files} and are left out of "
              f"the report: run {', '.join(lost['run_id'][:3])}{', …' * (len(lost) > 3)} (artifacts "
              f"under {where})", file=sys.stderr)
    return runs.drop(lost.index)


def folds(runs: pd.DataFrame) -> int:
    """K where the sweep cross-validates (data.folds=K), else 0 (runs made before data.folds too)."""
    column = runs.get("params.data.folds")
    return 0 if column is None else int(column.fillna(0).astype(int).max())


def cv_ratio(runs: pd.DataFrame) -> float:
    """The corrected resampled t-test's validation-over-training size, 1/(K-1) for K folds; 0 (the
    plain t-test) where the sweep does not cross-validate."""
    k = folds(runs)
    return 1 / (k - 1) if k else 0.0


def label_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Name each cell by the factors that vary across the runs: group choices, then single values
    within a group whose choice is fixed (e.g. imbalance.gamma across focal runs)."""
    groups = [f for f in FACTORS if f"tags.{f}" in runs and runs[f"tags.{f}"].nunique() > 1]
    varying = [f"tags.{f}" for f in groups]
    varying += [c for c in sorted(runs) if c.startswith("params.") and c not in REPLICATES
                and c.split(".")[1] not in groups and config.changes_results(c.split(".", 1)[1])
                and runs[c].nunique(dropna=False) > 1]
    names = [c.split(".", 1)[1] for c in varying]
    runs["fold"] = runs.get("params.data.fold", pd.Series(0, index=runs.index)).fillna(0).astype(int)
    cross_validated = folds(runs) > 0
    runs["replicate"] = [f"fold {f} seed {s}" if cross_validated else s  # what pairs two cells' runs
                         for f, s in zip(runs["fold"], runs["seed"], strict=True)]
    runs["cell"] = [" ".join(f"{n}={v}" for n, v in zip(names, row, strict=True)) or "all runs"
                    for row in runs[varying].itertuples(index=False)]
    return runs.sort_values(["cell", "seed", "fold"]).reset_index(drop=True)



def cell_factors(runs: pd.DataFrame, wanted: str, option: str) -> list[list[str]]:
    """`wanted` ("k=v k=v", as the report names a cell) as [factor, value] pairs, each a factor the
    sweep varied: one it did not vary would match every cell, and pick one without a word."""
    example = runs["cell"].iloc[0]
    varied = [part.split("=", 1)[0] for part in example.split() if "=" in part]
    fix = (f"name a cell by the factors it varied ({', '.join(varied)}), e.g. {option} '{example}'"
           if varied else f"leave {option} out: the sweep varied no factor, its runs make one cell")
    for word in wanted.split():
        factor, is_pair, _ = word.partition("=")
        if not is_pair:
            raise UserError(f"{option} {wanted!r}: {word!r} is not FACTOR=VALUE; {fix}")
        if factor not in varied:
            reason = (f"{factor} repeats each cell, it names none" if word.startswith(REPLICATE_KEYS)
                      else f"the sweep did not vary {factor}")
            raise UserError(f"{option} {wanted!r}: {reason}; {fix}")
    return [word.split("=", 1) for word in wanted.split()]


def matching_cell(runs: pd.DataFrame, wanted: str | None, option: str = "--baseline") -> str | None:
    """The first cell matching `wanted` (see cell_factors; None: the default baseline's, whose
    factors the sweep need not vary), or None."""
    pairs = cell_factors(runs, wanted, option) if wanted else DEFAULT_CELL.items()
    for cell in sorted(runs["cell"].unique()):
        parts = dict(part.split("=", 1) for part in cell.split() if "=" in part)
        if all(parts.get(key, value) == value for key, value in pairs):
            return cell
    return None


def pick_baseline(runs: pd.DataFrame, baseline: str | None) -> str:
    """The cell matching `baseline` (see `matching_cell`), else the first where none was asked for."""
    cells = sorted(runs["cell"].unique())
    found = matching_cell(runs, baseline)
    if found is None and baseline:
        raise UserError(f"--baseline {baseline!r} matches no cell: choose one of {cells}")
    return found or cells[0]



@functools.cache  # the figures and the paired tests both read them
def load_predictions(run_id: str, prefix: str = "test") -> np.ndarray:
    """A run's PREFIX_predictions.csv (test, extra_NAME) as rows of (label, probability), one per image.
    Read by column name, so that older runs' two-column files (label,probability) read as today's
    (image, patient, ..., error), and parsed as Python parses floats, digit for digit as written."""
    import io

    text = mlflow.artifacts.load_text(f"runs:/{run_id}/{prefix}_predictions.csv")
    table = pd.read_csv(io.StringIO(text), usecols=["label", "probability"], float_precision="round_trip")
    return table[["label", "probability"]].to_numpy(dtype=float)


def load_validation(run_id: str) -> pd.DataFrame:
    """A run's val_predictions.csv: image, label, probability."""
    import io

    return pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/val_predictions.csv")),
                       dtype={"image": str})



def provenance_table(runs: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """How to reproduce each cell (command, commits, data) and what would stop it reproducing."""
    rows = []
    for cell, group in runs.groupby("cell", sort=True):
        overrides = [o for o in group["tags.overrides"].iloc[0].split() if not o.startswith(REPLICATE_KEYS)]
        values = {"seed": group["seed"], "data.fold": group["fold"] if folds(runs) else []}
        replicates = [f"{key}={','.join(str(v) for v in sorted(set(found)))}"
                      for key, found in values.items() if len(found)]
        command = (f"python -m pneumo_exp {'-m ' if len(group) > 1 else ''}{' '.join(overrides)} "
                   + " ".join(replicates))
        commits = sorted(group["tags.git_commit"].unique())
        data = sorted(group["tags.data_fingerprint"].unique())
        flags = [w for w, bad in (("MIXED COMMITS", len(commits) > 1), ("MIXED DATA", len(data) > 1),
                                  ("uncommitted changes", (group["tags.git_dirty"] == "true").any()),
                                  ("commit unknown", (group["tags.git_commit"] == "unknown").any()))
                 if bad]
        rows.append([cell, f"`{command}`", " ".join(c[:10] for c in commits), " ".join(data),
                     ", ".join(flags) or "ok"])
    return ["cell", "command", "git commit", "data fingerprint", "check"], rows


def extra_sets(runs: pd.DataFrame) -> list[str]:
    """The names of the extra evaluation sets (data.extra_eval) the sweep's runs were scored on."""
    prefix = "params.data.extra_eval."
    return sorted(c.removeprefix(prefix) for c in runs if c.startswith(prefix) and runs[c].notna().any())
