"""The verdict on a trained model: the threshold chosen on validation, then validation and test
scored at it (test once per run, never used to choose anything)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn import metrics as skm

from pneumo_exp.evaluation import calibration

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from pneumo_exp.models.imbalance import Plan


def thresholded_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float
                        ) -> dict[str, float]:
    """Metrics of the decisions `probability >= threshold` (pneumonia = positive class)."""
    predicted = (probabilities >= threshold).astype(int)
    return {
        "accuracy": skm.accuracy_score(labels, predicted),
        "precision": skm.precision_score(labels, predicted, zero_division=0),
        "recall": skm.recall_score(labels, predicted, zero_division=0),
        "specificity": skm.recall_score(labels, predicted, pos_label=0, zero_division=0),
        "f1": skm.f1_score(labels, predicted, zero_division=0),
    }


ECE_BINS = 10  # equal-width bins of predicted probability, [0, 0.1), ..., [0.9, 1]


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """How far predicted probabilities are from observed frequencies: over ECE_BINS equal-width
    bins, the mean |mean probability - fraction of pneumonia| weighted by the bin's share of images
    (Naeini, Cooper & Hauskrecht 2015; Guo et al. 2017)."""
    bins = np.minimum((probabilities * ECE_BINS).astype(int), ECE_BINS - 1)
    gaps = [abs(probabilities[bins == b].mean() - labels[bins == b].mean()) * np.mean(bins == b)
            for b in range(ECE_BINS) if np.any(bins == b)]
    return float(np.sum(gaps))


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray,
                   threshold: float = 0.5) -> dict[str, float]:
    """Threshold-free metrics (auc, pr_auc; brier and ece: calibration) and those at `threshold`."""
    both_classes = len(np.unique(labels)) == 2
    return thresholded_metrics(labels, probabilities, threshold) | {
        "auc": skm.roc_auc_score(labels, probabilities) if both_classes else float("nan"),
        "pr_auc": skm.average_precision_score(labels, probabilities) if both_classes
        else float("nan"),
        "brier": skm.brier_score_loss(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
    }


def where_it_fails(labels: np.ndarray, probabilities: np.ndarray, kinds: np.ndarray | None,
                   threshold: float) -> dict[str, float]:
    """The operating point's confusion counts (tp, fp, tn, fn), and the recall on each kind of
    pneumonia the file names tell (bacterial, viral: Kermany's), where they tell it."""
    predicted = probabilities >= threshold
    positive = labels == 1
    found = {"tp": predicted & positive, "fp": predicted & ~positive, "tn": ~predicted & ~positive,
             "fn": ~predicted & positive}
    details = {name: float(mask.sum()) for name, mask in found.items()}
    for kind in ("bacteria", "virus"):
        of_kind = positive & (kinds == kind) if kinds is not None else np.zeros_like(positive)
        if of_kind.any():
            details[f"recall_{kind}"] = float(predicted[of_kind].mean())
            details[f"n_{kind}"] = float(of_kind.sum())
    return details


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, method: str | float,
                     target_sensitivity: float) -> float:
    """The operating point, chosen on validation: `youden` maximizes sensitivity + specificity - 1;
    `sensitivity` is the highest threshold whose sensitivity reaches `target_sensitivity`;
    `calibrated` and `balanced` cut Platt-calibrated probabilities (calibration.py) at 1/2 and at
    validation's share of pneumonia, the decisions that maximize accuracy at that share and at an
    even one (balanced accuracy); a number is used as it is."""
    if not isinstance(method, str):
        return float(method)
    if method in ("calibrated", "balanced"):
        fit = calibration.fit_calibration(labels, probabilities)
        return fit.threshold_at(0.5 if method == "calibrated" else fit.prior)
    # every threshold: the default drops those inside a vertical run of the curve, where the
    # highest one reaching the target sensitivity can lie (Youden's corner is kept either way)
    fpr, tpr, thresholds = skm.roc_curve(labels, probabilities, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is inf: no image positive
    if method == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    return float(thresholds[np.flatnonzero(tpr >= target_sensitivity)[0]])


def predicted_probabilities(model: keras.Model, split: tf.data.Dataset) -> np.ndarray:
    """One probability of pneumonia per image of `split`, in its order."""
    return model.predict(split, verbose=0).reshape(-1)


def plain_scores(labels: np.ndarray, probabilities: np.ndarray, threshold: float, plan: Plan
                 ) -> dict[str, float]:
    """A set's scores at `threshold` (binary_metrics), its loss under the run's imbalance plan, and
    the thresholded ones at 0.5 (`*_at_0.5`): validation's and each held-out set's alike."""
    scores = binary_metrics(labels, probabilities, threshold)
    scores["loss"] = plan.loss(labels.astype("float32")[:, None], probabilities[:, None])
    at_half = thresholded_metrics(labels, probabilities, 0.5)
    return {k: float(v) for k, v in scores.items()} | {f"{k}_at_0.5": float(v) for k, v in at_half.items()}
