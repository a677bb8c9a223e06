"""Adaptation on the two real shifted sites: Kermany train -> site_b, PneumoniaMNIST val -> test.

For each seed, a model of the quick recipe (`+experiment=quick`), trained by the harness or the
FINISHED run of the same config reused from the store, scores the shifted set:

  - plain, at the threshold chosen on validation, and with each threshold rule (train.threshold);
  - with each label-free method (eval.adapt: prior, bn, tent) and its applicability verdict
    (pneumo_exp/applicability.py): a method that does not apply is printed with its verdict and
    its would-be scores, marked `n/a`;
  - with a labelled sample of the site (eval.labelled; pneumo_exp/labelled.py): for each size, DRAWS
    random samples of whole patients, the rest of the site scored; with and without its BatchNorm
    statistics set on the site's images (eval.labelled_bn), by recalibration alone or with the head
    revised (eval.labelled_head).

It prints mean ± sd over seeds, paired differences against plain with their per-seed values, the
labelled curve with the 2.5-97.5 percentiles over draws and seeds, and a last line

  site_b_acc_plain=… site_b_acc_recommended=… site_b_acc_50_labelled=… site_b_spec_50_labelled=… …

    python benchmarks/site_shift.py [--seeds 0 1 2] [--store URI] [--pairs site_b pneumoniamnist]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT.parent / "shared" / "data"
PAIRS = {
    "site_b": ["data=chest_xray", f"data.root={DATA / 'chest_xray_pneumonia_224'}",
               f"data.extra_eval={{site_b:{DATA / 'chest_xray_pneumonia_224_site_b'}}}"],
    "pneumoniamnist": ["data=pneumoniamnist", f"data.path={DATA / 'pneumoniamnist' / 'pneumoniamnist.npz'}"],
}
METHODS = ("prior", "bn", "tent")
RULES = ("youden", "calibrated", "balanced", "sensitivity", 0.5)
SIZES = (10, 25, 50, 100)
DRAWS = 20
SHOWN = ("auc", "accuracy", "recall", "specificity")
SHORT = {"accuracy": "acc", "specificity": "spec"}  # in the last line


def compose(overrides: list[str]):
    """The project's config, composed as the CLI composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def trained_run(cfg, overrides: list[str]) -> str:
    """The FINISHED run of this training config in the store (tag site_shift_training: the config's
    hash without what only scores a trained model, eval and the threshold rule; or, trained before
    the config's version changed its hash, the run of the same overrides), or a new one trained by
    the harness."""
    import mlflow

    from pneumo_exp import config
    from pneumo_exp.run import run_experiment
    from pneumo_exp.tracking import store

    store.open_experiment(cfg.tracking)
    training = config.config_hash(cfg, "eval", "train.threshold", "train.target_sensitivity")
    for query, how in ((f"tags.site_shift_training = '{training}'", ""),
                       (f"tags.overrides = '{' '.join(overrides)}'", ", made by an earlier config version")):
        found = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], max_results=1,
                                   filter_string=f"{query} and attributes.status = 'FINISHED'")
        if len(found):
            print(f"reusing run {found['run_id'].iloc[0]} ({overrides[-1]}{how})")
            return str(found["run_id"].iloc[0])
    run_id = run_experiment(cfg, overrides).run_id
    mlflow.MlflowClient().set_tag(run_id, "site_shift_training", training)
    return run_id


def shifted_split(pair: str, dataset):
    return dataset.extra["site_b"] if pair == "site_b" else dataset.test


def scored_seed(pair: str, overrides: list[str]) -> dict:
    """{"methods": {name: metrics, verdict}, "rules": {rule: metrics}, "labelled": {(variant, n):
    [metrics per draw]}} for one seed's model on the pair's shifted set."""

    from pneumo_exp import data
    from pneumo_exp.data.pipeline import model_input
    from pneumo_exp.evaluation import adaptation, measure
    from pneumo_exp.tracking import reading

    cfg = compose(overrides)
    model = reading.load_model(f"runs:/{trained_run(cfg, overrides)}/model")
    dataset, channels = data.load(cfg.data), cfg.data.channels
    site, val = shifted_split(pair, dataset), dataset.val

    def predicted(images):
        return model.predict(model_input(images, channels), batch_size=128, verbose=0).reshape(-1)

    val_p, p = predicted(val.images), predicted(site.images)

    def rule(name):
        return lambda y, q: measure.choose_threshold(y, q, name, cfg.train.target_sensitivity)

    points = adaptation.operating_points(METHODS, model, val.images, val.labels, val_p,
                                         rule(cfg.train.threshold)(val.labels, val_p),
                                         rule(cfg.train.threshold), channels, cfg.seed)
    adapted = adaptation.adapted_predictions(METHODS, model, site.images, p, points, channels,
                                             cfg.eval.alpha, cfg.eval.min_images, cfg.seed)

    def metrics(q, threshold, y=site.labels):
        m = measure.binary_metrics(y, q, threshold)
        return {k: m[k] for k in SHOWN}

    result = {"methods": {"plain": (metrics(p, points["plain"].threshold), None)},
              "rules": {str(r): metrics(p, rule(r)(val.labels, val_p)) for r in RULES}}
    result["methods"] |= {m: (metrics(a.probabilities, a.threshold), a.verdict)
                          for m, a in adapted.items()}
    result["recommended"] = adaptation.recommended(adapted)
    result["labelled"] = labelled_curve(site, site_outputs(model, site, channels),
                                        points["plain"].threshold, cfg.seed)
    return result


def site_outputs(model, site, channels: int) -> dict[str, tuple]:
    """Each labelled variant's (probabilities, head inputs or None): Platt scaling (`platt`) or
    the head revised (`head`, eval.labelled_head), on the plain model or with its BatchNorm
    statistics set on the site's images (`bn_`, eval.labelled_bn)."""
    from pneumo_exp.data.pipeline import model_input
    from pneumo_exp.evaluation.adapt import batchnorm_adapted
    from pneumo_exp.evaluation.labelled import head_outputs

    pixels, both = model_input(site.images, channels), head_outputs(model)
    p, z = (np.asarray(a) for a in both.predict(pixels, batch_size=128, verbose=0))
    with batchnorm_adapted(model, pixels):
        bn_p, bn_z = (np.asarray(a) for a in both.predict(pixels, batch_size=128, verbose=0))
    p, bn_p = p.reshape(-1), bn_p.reshape(-1)
    return {"platt": (p, None), "bn_platt": (bn_p, None), "head": (p, z), "bn_head": (bn_p, bn_z)}


def labelled_curve(site, outputs: dict[str, tuple], plain_threshold: float, seed: int) -> dict:
    """(variant, n) -> the rest's metrics for each of DRAWS samples; ("plain", n): the run's own
    threshold on the same rests, for paired differences."""
    from pneumo_exp.evaluation import labelled, measure
    from pneumo_exp.evaluation.site_fit import fit_site

    curve: dict = {}
    for n in SIZES:
        for draw in range(DRAWS):
            sample = labelled.drawn(site, n, seed * 1000 + draw)
            rest = labelled.rest_of(site, site.patients[sample])
            y = site.labels[rest]
            plain = measure.thresholded_metrics(y, outputs["platt"][0][rest], plain_threshold)
            curve.setdefault(("plain", n), []).append(plain)
            for variant, (q, z) in outputs.items():
                fit = fit_site(site.labels[sample], q[sample], None if z is None else z[sample],
                               site.patients[sample], seed * 1000 + draw)
                scores = measure.thresholded_metrics(y, *fit.scores(q[rest], None if z is None else z[rest]))
                curve.setdefault((variant, n), []).append(scores)
    return curve


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def verdict_text(verdicts: list) -> str:
    """`applies`, `n/a` or `mixed` over seeds, with each seed's p-value."""
    if not verdicts:
        return ""
    state = ("applies" if all(v.applies for v in verdicts) else
             "n/a" if not any(v.applies for v in verdicts) else "mixed")
    return f"{state} ({','.join(f'{v.p_value:.3f}' for v in verdicts)})"


def print_methods(per_seed: list[dict]) -> list[float]:
    """The methods' table (mean ± sd over seeds, paired accuracy differences against plain);
    returns plain's accuracy per seed."""
    print(f"{'method':<8} {'verdict (p per seed)':<24} " + " ".join(f"{k:>13}" for k in SHOWN)
          + "   accuracy - plain (per seed)")
    plain = [s["methods"]["plain"][0]["accuracy"] for s in per_seed]
    for method in ("plain", *METHODS):
        rows = [s["methods"][method] for s in per_seed]
        diffs = [r[0]["accuracy"] - a for r, a in zip(rows, plain, strict=True)]
        per_seed_diffs = ", ".join(f"{d:+.3f}" for d in diffs)
        paired = f"   {np.mean(diffs):+.3f} ({per_seed_diffs})" if method != "plain" else ""
        cells = " ".join(f"{mean_sd([r[0][k] for r in rows]):>13}" for k in SHOWN)
        print(f"{method:<8} {verdict_text([v for _, v in rows if v is not None]):<24} {cells}{paired}")
    return plain


def print_curve(pair: str, per_seed: list[dict]) -> dict[str, float]:
    """The labelled-sample curve; returns the 50-image means."""
    print(f"\nlabelled sample of {pair}, the rest scored: mean over seeds of the mean over {DRAWS} draws "
          "[2.5, 97.5 percentiles over draws and seeds]")
    found = {}
    for variant, n in per_seed[0]["labelled"]:
        draws = [d for s in per_seed for d in s["labelled"][variant, n]]
        cells = []
        for k in ("accuracy", "recall", "specificity"):
            values = [d[k] for d in draws]
            low, high = np.percentile(values, [2.5, 97.5])
            cells.append(f"{k}={np.mean(values):.3f} [{low:.3f}, {high:.3f}]")
            if n == 50 and variant != "plain" and k != "recall":
                suffix = {"platt": "", "bn_platt": "_bn", "head": "_head", "bn_head": "_bn_head"}[variant]
                found[f"{pair}_{SHORT[k]}_50_labelled{suffix}"] = float(np.mean(values))
        print(f"  {variant:<9} n={n:<4} " + "  ".join(cells))
    return found


def report_pair(pair: str, seeds: list[int], per_seed: list[dict]) -> dict[str, float]:
    """Print the pair's tables; return the summary numbers."""
    print(f"\n== {pair}: mean ± sd over seeds {seeds} ==")
    plain = print_methods(per_seed)
    recommended = [s["recommended"] or "plain" for s in per_seed]
    chosen = [s["methods"][r][0]["accuracy"] for s, r in zip(per_seed, recommended, strict=True)]
    print(f"recommended per seed: {', '.join(recommended)}")
    print(f"\nthreshold rules on {pair} (each chosen on validation):")
    for r in RULES:
        rows = [s["rules"][str(r)] for s in per_seed]
        print(f"  {r!s:<12} " + " ".join(f"{k}={mean_sd([x[k] for x in rows])}" for k in SHOWN))
    summary = {f"{pair}_acc_plain": float(np.mean(plain)), f"{pair}_acc_recommended": float(np.mean(chosen))}
    return summary | print_curve(pair, per_seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--store", default="sqlite:///mlruns/mlflow.db",
                        help="the MLflow store whose runs are reused, and where new ones are logged")
    parser.add_argument("overrides", nargs="*", help="more overrides, e.g. a recipe written down beforehand")
    args = parser.parse_args()
    started, summary = time.perf_counter(), {}
    for pair in args.pairs:
        base = ["+experiment=quick", *PAIRS[pair], "tracking.log_figures=false", f"tracking.uri={args.store}",
                *args.overrides]
        per_seed = [scored_seed(pair, [*base, f"seed={seed}"]) for seed in args.seeds]
        summary |= report_pair(pair, args.seeds, per_seed)
    print(f"total {time.perf_counter() - started:.0f} s")
    print(" ".join(f"{key}={value:.3f}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
