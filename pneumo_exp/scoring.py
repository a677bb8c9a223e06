"""Each held-out set scored once: the test split and every data.extra_eval set, at the threshold
chosen on validation, with where it fails, a check of how far it looks from training, and, as
eval.adapt asks, the same set scored adapted without its labels (adapt.py), logged beside the plain
scores under `SET_METHOD_*` (test_prior_accuracy, extra_site_b_bn_auc, ...), never instead of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from pneumo_exp import adapt, data, tracking
from pneumo_exp.config import ADAPT_METHODS

if TYPE_CHECKING:
    import keras


def held_out_sets(dataset: data.Data) -> dict[str, data.Split]:
    """The sets scored once, by the prefix of their metrics: test, then extra_NAME."""
    return {"test": dataset.test, **{f"extra_{name}": split for name, split in dataset.extra.items()}}


def prefixed(prefix: str, scores: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": float(value) for key, value in scores.items()}


def operating_points(cfg: DictConfig, model: keras.Model, dataset: data.Data, threshold: float,
                     val_probabilities: np.ndarray
                     ) -> tuple[adapt.OperatingPoint, adapt.OperatingPoint | None]:
    """The plain model's operating point (the run's threshold, Platt scaling on validation) and,
    where eval.adapt renormalizes, the renormalized model's, chosen on validation the same way."""
    from pneumo_exp import evaluate

    labels = dataset.val.labels
    plain = adapt.OperatingPoint(threshold, adapt.fit_calibration(labels, val_probabilities))
    if "bn" not in ADAPT_METHODS[cfg.eval.adapt]:
        return plain, None
    if not adapt.batchnorm_networks(model):
        print(f"note: eval.adapt={cfg.eval.adapt}: the model has no BatchNorm layers "
              f"(regularization={cfg.regularization.name}), so bn leaves it unchanged")
    p = adapt.renormalized_probabilities(model, dataset.val.images, cfg.data.channels)
    return plain, adapt.OperatingPoint(
        evaluate.choose_threshold(labels, p, cfg.train.threshold, cfg.train.target_sensitivity),
        adapt.fit_calibration(labels, p))


def logged_operating_points(plain: adapt.OperatingPoint, renormalized: adapt.OperatingPoint | None
                            ) -> dict[str, float]:
    """What predict needs to adapt a new site's images as the run did (the run's own threshold is
    logged as `threshold`)."""
    points = {"": plain} | ({"bn_": renormalized} if renormalized else {})
    logged = {f"{prefix}calibration_{key}": getattr(point.calibration, key)
              for prefix, point in points.items() for key in ("slope", "intercept")}
    return logged | ({"bn_threshold": renormalized.threshold} if renormalized else {})


def score_held_out(cfg: DictConfig, model: keras.Model, dataset: data.Data, threshold: float,
                   val_probabilities: np.ndarray, test_probabilities: np.ndarray) -> dict[str, float]:
    """Every held-out set's metrics (the test split's plain ones are evaluate.assess's), its shift
    check and its adapted scores. A set that looks shifted is said in one line and tagged."""
    from pneumo_exp import evaluate
    from pneumo_exp.data import pipeline

    plain, renormalized = operating_points(cfg, model, dataset, threshold, val_probabilities)
    calibration = plain.calibration
    train_prevalence, val_mean = float(np.mean(dataset.train.labels)), float(np.mean(val_probabilities))
    metrics = {"train_prevalence": train_prevalence, "val_prevalence": calibration.prior,
               "val_mean_probability": val_mean, **logged_operating_points(plain, renormalized)}
    shifted = []
    for prefix, split in held_out_sets(dataset).items():
        p = test_probabilities if prefix == "test" else evaluate.predicted_probabilities(
            model, pipeline.batches(split, cfg.train.batch_size, cfg.data.channels))
        if prefix != "test":
            metrics |= prefixed(prefix, evaluate.binary_metrics(split.labels, p, threshold))
        metrics |= prefixed(prefix, evaluate.where_it_fails(split.labels, p, split.kinds, threshold))
        shift = adapt.shift_check(p, calibration, train_prevalence, val_mean,
                                  cfg.eval.shift_prevalence_margin, cfg.eval.shift_probability_margin)
        metrics |= prefixed(prefix, {"estimated_prevalence": shift.estimated_prevalence,
                                     "mean_probability": shift.mean_probability})
        if shift.suspected:
            shifted.append(prefix)
            print(adapt.shift_warning(prefix.removeprefix("extra_"), shift, train_prevalence, val_mean))
        for method, adapted in adapt.adapted_predictions(model, split.images, p, plain, renormalized,
                                                         cfg.eval.adapt, cfg.data.channels).items():
            scores = evaluate.binary_metrics(split.labels, adapted.probabilities, adapted.threshold)
            if method == "both":  # prior's estimate is the shift check's; bn alone makes none
                scores["estimated_prevalence"] = adapted.prevalence
            metrics |= prefixed(f"{prefix}_{method}", scores)
    tracking.set_tags({"shift_suspected": str(bool(shifted)).lower(),
                       "shift_suspected_sets": ",".join(shifted)})
    return metrics
