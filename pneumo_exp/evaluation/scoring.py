"""The evaluate stage: the threshold chosen on validation, then each held-out set (the test split and
every data.extra_eval set) scored once, in one place (score_set): its plain scores at that threshold
with their 95% intervals, where it fails, a check of how far it looks from training, and, as
eval.adapt asks, the set scored adapted without its labels where the method applies to it
(adaptation.py), logged beside the plain scores under `SET_METHOD_*` (test_prior_accuracy,
extra_site_b_tent_auc, ...), never instead of them; as eval.labelled asks, the rest of a set scored
with a labelled sample of it (labelled.py) under `SET_labelled_*`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from pneumo_exp import data
from pneumo_exp.evaluation import adaptation, labelled
from pneumo_exp.evaluation.adaptation import Adapted, OperatingPoint
from pneumo_exp.evaluation.settings import ADAPT_METHODS

if TYPE_CHECKING:
    import keras

    from pneumo_exp.models.imbalance import Plan


@dataclass
class Assessment:
    """What scoring found, for the run to log: metrics, tags and artifacts (path: lines)."""
    labels: dict[str, np.ndarray]  # "val", "test", "extra_NAME"
    probabilities: dict[str, np.ndarray]
    threshold: float  # chosen on validation
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, list[str]] = field(default_factory=dict)


def assess(cfg: DictConfig, model: keras.Model, plan: Plan, dataset: data.Data) -> Assessment:
    """Validation scored and the threshold chosen on it (`final_val_*`, `threshold`), then every
    held-out set scored once (score_held_out)."""
    from pneumo_exp.evaluation import measure

    y, p = dataset.val.labels, predicted(cfg, model, dataset.val)
    threshold = measure.choose_threshold(y, p, cfg.train.threshold, cfg.train.target_sensitivity)
    found = Assessment({"val": y}, {"val": p}, threshold, {"threshold": threshold})
    found.metrics |= {f"final_val_{k}": v for k, v in measure.plain_scores(y, p, threshold, plan).items()
                      if not k.endswith("_at_0.5")}
    score_held_out(cfg, model, plan, dataset, found)
    return found


def predicted(cfg: DictConfig, model: keras.Model, split: data.Split) -> np.ndarray:
    """The model's probability of pneumonia for each image of `split`, in its order."""
    from pneumo_exp.data import pipeline
    from pneumo_exp.evaluation import measure

    return measure.predicted_probabilities(model, pipeline.batches(split, cfg.train.batch_size,
                                                                   cfg.data.channels))


def held_out_sets(dataset: data.Data) -> dict[str, data.Split]:
    """The sets scored once, by the prefix of their metrics: test, then extra_NAME."""
    return {"test": dataset.test, **{f"extra_{name}": split for name, split in dataset.extra.items()}}


def prefixed(prefix: str, scores: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": float(value) for key, value in scores.items()}


def operating_points(cfg: DictConfig, model: keras.Model, dataset: data.Data, threshold: float,
                     val_probabilities: np.ndarray) -> dict[str, OperatingPoint]:
    """Validation seen as each method eval.adapt names sees it (adaptation.operating_points)."""
    from pneumo_exp.evaluation import adapt, measure

    methods = ADAPT_METHODS[cfg.eval.adapt]
    renormalizes = {"bn", "tent"} & {adaptation.TRANSFORM[m] for m in methods}
    if renormalizes and not adapt.batchnorm_networks(model):
        print(f"note: eval.adapt={cfg.eval.adapt}: the model has no BatchNorm layers "
              f"(regularization={cfg.regularization.name}), so bn and tent leave it unchanged")

    def chosen(labels: np.ndarray, p: np.ndarray) -> float:
        return measure.choose_threshold(labels, p, cfg.train.threshold, cfg.train.target_sensitivity)

    return adaptation.operating_points(methods, model, dataset.val.images, dataset.val.labels,
                                       val_probabilities, threshold, chosen, cfg.data.channels, cfg.seed)


def logged_operating_points(points: dict[str, OperatingPoint]) -> dict[str, float]:
    """What predict needs to adapt a new site's images as the run did (the run's own threshold is
    logged as `threshold`): calibration_*, bn_calibration_*, bn_threshold, tent_..."""
    logged = {}
    for transform, point in points.items():
        prefix = adaptation.metric_prefix(transform)
        logged |= {f"{prefix}calibration_{key}": getattr(point.calibration, key)
                   for key in ("slope", "intercept")}
        if prefix:
            logged[f"{prefix}threshold"] = point.threshold
    return logged


def validation_scores(points: dict[str, OperatingPoint]) -> list[str]:
    """Validation's labels and each transform's probabilities, as CSV lines (logged as
    adaptation.VALIDATION_SCORES): what predict --adapt checks a folder's scores against."""
    columns = {"label": points["plain"].val_labels}
    columns |= {t: point.val_probabilities for t, point in points.items()}
    rows = zip(*columns.values(), strict=True)
    return [",".join(columns)] + [",".join(f"{v:.8g}" for v in row) for row in rows]


def adapted_metrics(prefix: str, labels: np.ndarray, adapted: dict[str, Adapted]) -> dict[str, float]:
    """Each method's verdict (SET_METHOD_applies, _fit_p, _fit_statistic) and, where it applies, its
    scores."""
    from pneumo_exp.evaluation import measure

    metrics = {}
    for method, a in adapted.items():
        v = a.verdict
        metrics |= prefixed(f"{prefix}_{method}", {"applies": v.applies, "fit_p": v.p_value,
                                                   "fit_statistic": v.statistic})
        if v.applies:
            scores = measure.binary_metrics(labels, a.probabilities, a.threshold)
            metrics |= prefixed(f"{prefix}_{method}", scores)
    return metrics


def score_held_out(cfg: DictConfig, model: keras.Model, plan: Plan, dataset: data.Data,
                   found: Assessment) -> None:
    """Every held-out set scored into `found` (score_set), after the operating points that
    adaptation needs were chosen on validation; the sets that look shifted and the methods that do
    not apply tagged."""
    threshold, val_probabilities = found.threshold, found.probabilities["val"]
    points = operating_points(cfg, model, dataset, threshold, val_probabilities)
    found.metrics |= {"train_prevalence": float(np.mean(dataset.train.labels)),
                      "val_prevalence": points["plain"].calibration.prior,
                      "val_mean_probability": float(np.mean(val_probabilities)),
                      **logged_operating_points(points)}
    found.artifacts[adaptation.VALIDATION_SCORES] = validation_scores(points)
    shifted, not_applicable = [], []
    for prefix, split in held_out_sets(dataset).items():
        suspected, adapted = score_set(cfg, model, plan, prefix, split, found, points)
        shifted += [prefix] * suspected
        not_applicable += [f"{prefix}:{m}" for m, a in adapted.items() if not a.verdict.applies]
    found.tags |= {"shift_suspected": str(bool(shifted)).lower(), "shift_suspected_sets": ",".join(shifted),
                   "adapt_not_applicable": ",".join(not_applicable)}


def score_set(cfg: DictConfig, model: keras.Model, plan: Plan, prefix: str, split: data.Split,
              found: Assessment, points: dict[str, OperatingPoint]) -> tuple[bool, dict[str, Adapted]]:
    """One set scored into `found`, all in one place: its plain scores at the run's threshold with
    their intervals (by bootstrap over its patients; tag SET_ci says how), where it fails, whether it
    looks shifted (said in one line, with what applies to it), its labelled and adapted scores; a
    method that does not apply is said in one line too. Returns (looks shifted, adapted)."""
    from pneumo_exp.evaluation import intervals, measure

    name, threshold, run = prefix.removeprefix("extra_"), found.threshold, found.metrics
    p = predicted(cfg, model, split)
    found.labels[prefix], found.probabilities[prefix] = split.labels, p  # what the run logs per image
    metrics = measure.plain_scores(split.labels, p, threshold, plan)
    metrics |= measure.where_it_fails(split.labels, p, split.kinds, threshold)
    cis = intervals.of_test_scores(split.labels, p, split.patients, threshold, cfg.seed)
    metrics |= {key.removeprefix("test_"): value for key, value in cis.items()}
    found.tags[f"{prefix}_ci"] = intervals.described(split.patients, cis)
    train_prevalence, val_mean = run["train_prevalence"], run["val_mean_probability"]
    shift = adaptation.shift_check(p, points["plain"].calibration, train_prevalence, val_mean,
                                   cfg.eval.shift_prevalence_margin, cfg.eval.shift_probability_margin)
    metrics |= {"estimated_prevalence": shift.estimated_prevalence,
                "mean_probability": shift.mean_probability}
    adapted = adaptation.adapted_predictions(ADAPT_METHODS[cfg.eval.adapt], model, split.images, p, points,
                                             cfg.data.channels, cfg.eval.alpha, cfg.eval.min_images, cfg.seed)
    for line in (adaptation.not_applicable_line(name, adapted), shift.suspected
                 and adaptation.shift_warning(name, shift, train_prevalence, val_mean, adapted)):
        if line:
            print(line)
    if name in (cfg.eval.labelled or {}):
        metrics |= labelled.scored(cfg, model, split, p, threshold, cfg.eval.labelled[name])
    found.metrics |= prefixed(prefix, metrics) | adapted_metrics(prefix, split.labels, adapted)
    return shift.suspected, adapted
