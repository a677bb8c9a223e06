"""`python -m pneumo_exp.report`: an ablation report read back from the MLflow store.

It opens with the sweep's questions answered in words (answer.py), on the internal test and on every
extra evaluation set the runs were scored on (data.extra_eval), then whether the cells rank alike on
those sets (transfer.py), then the tables it is all drawn from: one row per cell (a config without its
seed) with mean ± sd and 95% intervals over seeds (seeds.py), the marginal effect of each factor,
paired comparisons with a baseline cell over seeds and on the shared test images (per_image.py), where
each cell fails, extra evaluation sets, figures (figures.py), and the command, commit and data behind
every cell (runs.py). Reads only the store, so anyone holding it regenerates a byte-identical report.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd

from pneumo_exp import UserError, file_in_the_way, one_line_errors, store_uri_default
from pneumo_exp.report import answer, figures, folds, per_image, runs, seeds, summary, transfer
from pneumo_exp.report.markup import render
from pneumo_exp.tracking import reading, store, sweep


def write_report(sweep_id: str, out: Path, experiment: str = "pneumo_exp",
                 baseline: str | None = None, filter_string: str = "", log: bool = True) -> Path:
    """Write report.md, report.html and figures to `out`; log them to the sweep's parent run."""
    found = runs.label_cells(runs.with_artifacts(runs.find_runs(sweep_id, experiment, filter_string)))
    base = runs.pick_baseline(found, baseline)
    out.mkdir(parents=True, exist_ok=True)
    blocks = [("title", f"Ablation report: sweep {sweep_id}, experiment {experiment}"),
              *sections(found, base, figures.draw(found, out))]
    (out / "report.md").write_text(render(blocks, markdown=True))
    (out / "report.html").write_text(render(blocks, markdown=False, figures=out))
    parent = sweep.find_parent(experiment, sweep_id) if log else None
    if parent:
        mlflow.MlflowClient().log_artifacts(parent.info.run_id, str(out), "report")
        describe_parent(parent.info.run_id, found, base, blocks)
    return out / "report.md"


def describe_parent(run_id: str, found: pd.DataFrame, base: str, blocks: list[tuple]) -> None:
    """The sweep's parent run says what its report says, where MLflow's runs table shows it: the
    answer as the run's description (MLflow's note), each varied factor as a param `varied.FACTOR`
    (kept as first logged: a param cannot change), the best cell's and the baseline's mean test AUC
    as metrics, the best cell as a tag, and the runs' datasets as its own."""
    client = mlflow.MlflowClient()
    start = blocks.index(("h", "Answer")) + 1
    end = next((i for i in range(start, len(blocks)) if blocks[i][0] == "h"), len(blocks))
    answer_text = [body[0] for kind, *body in blocks[start:end] if kind == "p"]
    client.set_tag(run_id, "mlflow.note.content",
                   "\n\n".join([*answer_text, "The full report: Artifacts, report/report.html."]))
    logged = client.get_run(run_id).data.params
    factors: dict[str, set[str]] = {}
    for cell in found["cell"].unique():
        for factor, _, value in (word.partition("=") for word in cell.split() if "=" in word):
            factors.setdefault(factor, set()).add(value)
    for factor, values in sorted(factors.items()):
        if f"varied.{factor}" not in logged:
            client.log_param(run_id, f"varied.{factor}", ", ".join(sorted(values)))
    auc = found.groupby("cell")["metrics.test_auc"].mean()
    datasets = {(d.dataset.name, d.dataset.digest): d for child in found["run_id"]
                for d in client.get_run(child).inputs.dataset_inputs}
    client.log_inputs(run_id, datasets=list(datasets.values()))  # the runs table's Dataset column
    client.log_metric(run_id, "best_cell_test_auc", float(auc.max()))
    client.log_metric(run_id, "baseline_test_auc", float(auc[base]))
    client.set_tag(run_id, "best_cell", max(auc.index, key=lambda cell: (auc[cell], cell == base)))


def sections(found: pd.DataFrame, base: str, figure_files: list[str]) -> list[tuple]:
    """The report's blocks, the answer first and the numbers it is drawn from after it."""
    comparisons, on_images = seeds.compare(found, base), per_image.image_tests(found, base)
    names = runs.extra_sets(found)
    extra = {name: seeds.compare(found, base, seeds.extra_prefix(name)) for name in names}
    family = len(comparisons)
    over, corrected, test = seeds.described(runs.folds(found))
    paragraphs = [*summary.result(found, base, names), *answer.answer(base, comparisons, on_images, extra)]
    return [
        ("h", "Answer"), *[("p", text) for text in paragraphs],
        *folds.section(found, base),
        *(transfer.section(found, names) if family else []),
        ("h", "Cells"),
        ("p", f"{len(found)} FINISHED runs in {found['cell'].nunique()} cells. Metrics are on each run's "
              "test split, thresholded ones at the threshold each run chose on validation; mean ± sd "
              f"over {over}, [95% t-interval of the mean{corrected}]. {seeds.CLIPPED_NOTE}"),
        ("table", *seeds.metric_table(found, seeds.METRICS)),
        *(comparison_sections(found, base, comparisons, on_images, over, test) if family else []),
        ("h", "Where it fails"),
        ("p", "Calibration: Brier score and expected calibration error (ECE: 10 equal-width bins of "
              "predicted probability, each |mean probability - share of pneumonia| weighted by its "
              "share of images; Naeini et al. 2015, Guo et al. 2017). Recall on bacterial and viral "
              "pneumonia where the Kermany file names say which. Confusion counts at each run's "
              "threshold."),
        ("table", *seeds.failure_table(found)),
        *extra_sections(found, extra),
        ("h", "Figures"),
        ("p", "PNG files beside this report; report.html holds them too, so it shows them wherever it is "
              "opened (MLflow's artifact view shows report.md's figures as links only)."),
        *[("img", name) for name in figure_files],
        ("h", "Reproduce each cell"), ("table", *runs.provenance_table(found)),
    ]


def comparison_sections(found: pd.DataFrame, base: str, comparisons: dict, on_images: dict, over: str,
                        test: str) -> list[tuple]:
    """The factors' marginal effects and the cells paired with the baseline: only where there are
    cells to compare."""
    family = len(comparisons)
    family_text = f"{family} comparison{'s' * (family != 1)}"
    return [
        ("h", "Marginal effect of each factor (mean over cells of the other factors)"),
        ("table", *seeds.marginal_table(found)),
        ("h", f"Paired comparison with baseline `{base}`"),
        ("p", f"Difference cell - baseline on matching {over}: mean ± sd [95% CI, clipped to [-1, 1]]; "
              f"p from {test}; beside it, (Holm …) "
              f"is that p Holm-adjusted (Holm 1979, step-down) over the {family_text} against the "
              "baseline, per metric (a comparison without a p-value is not counted)."),
        ("table", *seeds.paired_table(comparisons)),
        ("h", "Paired tests on the shared test images"),
        ("p", per_image.IMAGE_TESTS_NOTE.format(family=family, s="s" * (family != 1))),
        ("table", *per_image.image_table(on_images)),
    ]


def extra_sections(found: pd.DataFrame, extra: dict[str, dict[str, dict[str, seeds.Comparison]]]
                   ) -> list[tuple]:
    """Per extra evaluation set (data.extra_eval), where the runs were scored on any: each cell's
    scores, and its paired comparison with the baseline that the answer on that set is drawn from."""
    if not extra:
        return []
    blocks: list[tuple] = [
        ("h", "Extra evaluation sets"),
        ("p", "Each set scored once per run at the threshold chosen on validation; nothing from these "
              "sets reached training, early stopping or the threshold. Below each set's scores, each cell "
              "minus the baseline on the seeds both were scored on, as in the paired comparison above, "
              "Holm-adjusted over that set's comparisons, per metric.")]
    for name, comparisons in extra.items():
        prefix = seeds.extra_prefix(name)
        blocks += [("p", f"`{name}`:"), ("table", *seeds.extra_table(found, name))]
        if comparisons:  # one cell has nothing to pair with
            blocks += [("p", f"`{name}`, paired with the baseline:"),
                       ("table", *seeds.paired_table(comparisons, prefix))]
    return blocks


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
        reading.experiment(args.experiment)
        sweep_id = args.sweep or runs.newest_sweep(args.experiment)
        path = write_report(sweep_id, args.out or Path("reports") / sweep_id, args.experiment,
                            args.baseline, args.filter, log=not args.no_log)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
