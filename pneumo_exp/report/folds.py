"""What only a cross-validated sweep (data.folds=K, `+sweeps=cv`) can say: each cell's out-of-fold
validation predictions pooled into one out-of-fold AUC (each training image scored once, by the fold
model that did not train on it), cells compared on them by DeLong's test, and the cross-validation
ensemble (the mean of a cell's K fold models) scored once on the test split and on each extra set,
at the mean of the fold runs' thresholds: validation only, as every run's is."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas as pd

from pneumo_exp import UserError
from pneumo_exp.report import runs as store_runs
from pneumo_exp.report.paired import auc_interval, delong, holm, p_number

Table = tuple[list[str], list[list[str]]]


def pooled(validation: list[pd.DataFrame]) -> pd.DataFrame:
    """The K fold runs' validation predictions (image, label, probability) as one out-of-fold set,
    sorted by image; an image validated twice means the runs are not the folds of one split."""
    found = pd.concat(validation, ignore_index=True).sort_values("image", ignore_index=True)
    if found["image"].duplicated().any():
        raise UserError(f"image {found['image'][found['image'].duplicated()].iloc[0]} is in two folds' "
                        "validation: the runs are not the folds of one split (same data.split_seed and data)")
    return found


def out_of_fold(runs: pd.DataFrame, k: int) -> dict[tuple[str, int], pd.DataFrame]:
    """(cell, seed) -> its pooled out-of-fold predictions, where all K of its folds FINISHED."""
    found = {}
    for (cell, seed), group in runs.groupby(["cell", "seed"], sort=True):
        if sorted(group["fold"]) == list(range(k)):
            found[cell, seed] = pooled([store_runs.load_validation(r) for r in group["run_id"]])
    return found


def oof_table(runs: pd.DataFrame, found: dict[tuple[str, int], pd.DataFrame], baseline: str) -> Table:
    """Each cell's out-of-fold AUC with DeLong's 95% interval, and DeLong's test against the baseline
    on the same images and seed (the largest p over seeds, Holm-adjusted over the cells)."""
    cells = sorted({cell for cell, _ in found})
    tests = {cell: [oof_delong(found[cell, s], found[baseline, s]) for c, s in found
                    if c == cell and (baseline, s) in found] for cell in cells if cell != baseline}
    worst = {cell: max(p) if p else math.nan for cell, p in tests.items()}
    adjusted = dict(zip(worst, holm(list(worst.values())), strict=True))
    rows = []
    for (cell, seed), oof in found.items():
        auc, low, high = auc_interval(oof["label"].to_numpy(int), oof["probability"].to_numpy())
        test = ("baseline" if cell == baseline else "n/a" if math.isnan(worst[cell]) else
                f"p={p_number(worst[cell])} (Holm {p_number(adjusted[cell])})")
        folds = runs[(runs["cell"] == cell) & (runs["seed"] == seed)]["metrics.final_val_auc"]
        rows.append([cell, str(seed), str(len(oof)), f"{auc:.3f} [{low:.3f}, {high:.3f}]",
                     f"{folds.mean():.3f}", test])
    return (["cell", "seed", "images", "out-of-fold AUC [95% CI]", "folds' own validation AUC (mean)",
             "DeLong vs baseline"], rows)


def oof_delong(ours: pd.DataFrame, theirs: pd.DataFrame) -> float:
    """DeLong's p of two cells' out-of-fold predictions of the same images (nan where they differ)."""
    if not ours["image"].equals(theirs["image"]):
        return math.nan
    return delong(ours["label"].to_numpy(int), ours["probability"].to_numpy(),
                  theirs["probability"].to_numpy())[3]


def ensemble_threshold(group: pd.DataFrame) -> float:
    """The mean of the fold runs' own thresholds, each chosen on its fold's validation. The
    ensemble's probability is the mean of its members', so it is cut at the mean of their cuts: an
    image is called pneumonia where the members' margins over their own thresholds average above 0.
    A threshold chosen on the pooled out-of-fold predictions would cut single models' scores: where
    the members' scores are on different scales (the quick recipe's thresholds range from .10 to .98
    within one cell), it misses the ensemble's."""
    return float(group["metrics.threshold"].mean())


def ensemble_scores(group: pd.DataFrame, prefix: str) -> dict[str, float] | None:
    """The fold models' mean probability on a held-out set (PREFIX_predictions.csv of each fold run,
    the same images in the same order), scored at `ensemble_threshold`. None where a run lacks the
    set or its labels differ."""
    from pneumo_exp.evaluation import measure

    try:
        predictions = [store_runs.load_predictions(r, prefix) for r in group["run_id"]]
    except OSError:
        return None
    if any(p.shape != predictions[0].shape or not np.array_equal(p[:, 0], predictions[0][:, 0])
           for p in predictions):
        return None
    threshold = ensemble_threshold(group)
    labels, mean = predictions[0][:, 0].astype(int), np.mean([p[:, 1] for p in predictions], axis=0)
    return measure.binary_metrics(labels, mean, threshold) | {"threshold": threshold}


def ensemble_table(runs: pd.DataFrame, found: dict[tuple[str, int], pd.DataFrame]) -> Table:
    """Per cell and seed, the cross-validation ensemble on the test split and on each extra set."""
    sets = ["test", *(f"extra_{name}" for name in store_runs.extra_sets(runs))]
    rows = []
    for cell, seed in found:
        group = runs[(runs["cell"] == cell) & (runs["seed"] == seed)]
        for prefix in sets:
            scores = ensemble_scores(group, prefix)
            if scores:
                rows.append([cell, str(seed), prefix.removeprefix("extra_"), f"{scores['threshold']:.3f}"]
                            + [f"{scores[k]:.3f}" for k in ("auc", "accuracy", "recall", "specificity")])
    return ["cell", "seed", "set", "threshold", "AUC", "accuracy", "sensitivity", "specificity"], rows


def section(runs: pd.DataFrame, baseline: str) -> list[tuple]:
    """The report's cross-validation section; nothing where the sweep does not cross-validate."""
    k = store_runs.folds(runs)
    if not k:
        return []
    found = out_of_fold(runs, k)
    if not found:
        return [("h", "Cross-validation"), ("p", f"No cell has all {k} folds FINISHED: nothing is pooled.")]
    return [
        ("h", "Cross-validation"),
        ("p", f"Each cell was trained on {k} folds of the training patients (data.folds={k}), fold k "
              "validating. Out of fold: each cell's validation predictions of its folds pooled, so that "
              "every training image is scored once, by the model that did not see it; one AUC per cell "
              "(and seed) with DeLong's 95% interval, compared with the baseline's on the same images by "
              "DeLong's test (the largest p over seeds, Holm-adjusted over the cells). Pooling ranks all "
              "folds' scores together, so it is below the folds' own validation AUCs (beside it) where the "
              "fold models score on different scales: one threshold would not serve them all."),
        ("table", *oof_table(runs, found, baseline)),
        ("p", f"The cross-validation ensemble: the mean probability of a cell's {k} fold models, scored "
              "once on the test split and on each extra set, at the mean of the fold runs' thresholds (each "
              "chosen on its own fold's validation): an image is called pneumonia where the members' "
              "margins over their own thresholds average above 0."),
        ("table", *ensemble_table(runs, found)),
    ]


def fold_members(sweep: str, experiment: str, cell: str | None) -> tuple[pd.DataFrame, float]:
    """The K fold runs of one cell of a finished cross-validated sweep (named by its id or its parent
    run's id; `cell` as the report names it, needed where the sweep has several), its lowest seed,
    and the ensemble's threshold (`ensemble_threshold`): what predict averages."""
    import mlflow

    from pneumo_exp.tracking import reading

    reading.experiment(experiment)
    parent = []
    if sweep.isalnum():  # an id: anything else is no sweep, and would not parse as a filter
        parent = mlflow.search_runs(experiment_names=[experiment], output_format="list", max_results=1,
                                    filter_string=f"tags.sweep_role = 'parent' and tags.sweep_id = '{sweep}'")
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            parent = parent or [mlflow.get_run(sweep)]
    if parent and parent[0].data.tags.get("sweep_role") != "parent":
        raise UserError(f"{sweep} is the id of a run, not of a sweep: pass its model, runs:/{sweep}/model")
    if not parent:
        raise UserError(f"{sweep} is neither a model URI (runs:/RUN_ID/model) nor a sweep of experiment "
                        f"{experiment!r}: pass a model, or a cross-validated sweep's id or parent run id")
    runs = store_runs.label_cells(store_runs.find_runs(parent[0].data.tags["sweep_id"], experiment))
    k, cells = store_runs.folds(runs), sorted(runs["cell"].unique())
    if not k:
        raise UserError(f"sweep {sweep} is not cross-validated (data.folds=0): pass one of its runs' "
                        "models, runs:/RUN_ID/model")
    chosen = store_runs.matching_cell(runs, cell, "--cell") if cell else cells[0] if len(cells) == 1 else None
    if chosen is None:
        raise UserError(f"sweep {sweep} has {len(cells)} cells{f' and none is {cell!r}' if cell else ''}: "
                        f"choose one with --cell, e.g. --cell '{cells[0]}'")
    group = runs[runs["cell"] == chosen]
    group = group[group["seed"] == group["seed"].min()]
    if sorted(group["fold"]) != list(range(k)):
        raise UserError(f"sweep {sweep}: cell '{chosen}' has {len(group)} of its {k} folds FINISHED: run "
                        "the sweep again to finish them")
    return group, ensemble_threshold(group)
