"""The operating point and the metrics: threshold chosen on validation, test scored at it and at 0.5."""

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from pneumo_exp.evaluation.measure import (
    choose_threshold,
    expected_calibration_error,
    plain_scores,
    where_it_fails,
)
from pneumo_exp.models import imbalance
from tests.helpers import make_config

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.3, 0.55, 0.7, 0.4, 0.6, 0.8, 0.85, 0.9, 0.95])


def test_youden_threshold_maximizes_sensitivity_plus_specificity():
    threshold = choose_threshold(LABELS, PROBS, "youden", 0.95)
    predicted = threshold <= PROBS
    j = predicted[LABELS == 1].mean() + (~predicted[LABELS == 0]).mean() - 1
    for t in np.unique(PROBS):
        p = t <= PROBS
        assert p[LABELS == 1].mean() + (~p[LABELS == 0]).mean() - 1 <= j + 1e-12
    assert threshold == pytest.approx(0.8)  # sensitivity 4/6, specificity 4/4: J = 2/3


def test_sensitivity_threshold_is_the_highest_that_reaches_the_target():
    threshold = choose_threshold(LABELS, PROBS, "sensitivity", 1.0)
    assert threshold == pytest.approx(0.4)  # the lowest-scored pneumonia image must be caught
    assert (PROBS[LABELS == 1] >= threshold).all()
    assert choose_threshold(LABELS, PROBS, "sensitivity", 0.8) == pytest.approx(0.6)
    assert choose_threshold(LABELS, PROBS, 0.3, 0.95) == 0.3  # a number is taken as it is
    # inside a vertical run of the ROC curve (no false positive above 0.3): still the highest
    labels, probs = np.array([0, 0, 1, 1, 1, 1]), np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.3])
    assert choose_threshold(labels, probs, "sensitivity", 0.5) == pytest.approx(0.8)


def test_a_set_is_scored_at_the_threshold_validation_chose_and_at_one_half():
    cfg = make_config(["train.threshold=sensitivity", "train.target_sensitivity=1.0"])
    plan = imbalance.plan(cfg.imbalance, LABELS)
    test_probs = np.array([0.2, 0.45, 0.5, 0.9, 0.42, 0.48, 0.7, 0.99, 0.3, 0.6])
    threshold = choose_threshold(LABELS, PROBS, cfg.train.threshold, cfg.train.target_sensitivity)
    assert threshold == pytest.approx(0.4)
    assert plain_scores(LABELS, PROBS, threshold, plan)["recall"] == 1.0
    metrics = plain_scores(LABELS, test_probs, threshold, plan)
    assert metrics["recall"] == pytest.approx(5 / 6)  # 0.3 < 0.4: one missed
    assert metrics["recall_at_0.5"] == pytest.approx(3 / 6)
    assert metrics["specificity"] == pytest.approx(1 / 4)
    assert metrics["specificity_at_0.5"] == pytest.approx(2 / 4)
    assert metrics["brier"] == pytest.approx(brier_score_loss(LABELS, test_probs))
    assert "auc_at_0.5" not in metrics  # threshold-free metrics have no 0.5 twin


def test_expected_calibration_error_is_the_weighted_gap_per_bin():
    labels = np.array([1] * 6 + [0] * 4 + [1] * 1 + [0] * 9)
    probabilities = np.array([0.85] * 10 + [0.05] * 10)  # bins [0.8, 0.9) and [0, 0.1)
    # |0.85 - 0.6| * 10/20 + |0.05 - 0.1| * 10/20
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.125 + 0.025)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0  # 1.0 is in the top bin


def test_where_it_fails_counts_the_decisions_and_the_recall_per_kind_of_pneumonia():
    labels = np.array([1, 1, 1, 1, 0, 0])
    probabilities = np.array([0.9, 0.2, 0.8, 0.7, 0.6, 0.1])
    kinds = np.array(["bacteria", "bacteria", "virus", "virus", "", ""])
    details = where_it_fails(labels, probabilities, kinds, 0.5)
    assert {k: details[k] for k in ("tp", "fp", "tn", "fn")} == {"tp": 3, "fp": 1, "tn": 1, "fn": 1}
    assert (details["recall_bacteria"], details["recall_virus"]) == (0.5, 1.0)
    assert "recall_virus" not in where_it_fails(labels, probabilities, None, 0.5)  # names say nothing


def marked_point(figure) -> tuple[np.ndarray, str]:
    """The (x, y) and legend label of the one point a curve figure marks at the run's threshold."""
    (point,) = [line for line in figure.axes[0].get_lines() if line.get_label().startswith("threshold")]
    return point.get_xydata(), point.get_label()


def test_roc_and_pr_curves_name_the_split_and_mark_the_operating_point():
    from pneumo_exp.evaluation import plots

    # at 0.5: 5 of 6 pneumonia images caught (0.6 and up), 2 of 4 normal ones flagged (0.55, 0.7)
    roc = plots.roc_curve(LABELS, PROBS, "test", 0.5)
    assert roc.axes[0].get_title() == "ROC, test (10 images)"
    xy, label = marked_point(roc)
    assert xy[0].tolist() == pytest.approx([0.5, 5 / 6]) and len(xy) == 1  # (1 - specificity, sensitivity)
    assert label == "threshold 0.500 (chosen on validation):\nsensitivity 0.833, specificity 0.500"
    assert label in roc.axes[0].get_legend_handles_labels()[1]
    pr = plots.pr_curve(LABELS, PROBS, "val", 0.5)
    assert pr.axes[0].get_title() == "Precision-recall, val (10 images)"
    xy, label = marked_point(pr)
    assert xy[0].tolist() == pytest.approx([5 / 6, 5 / 7]) and len(xy) == 1  # (recall, precision)
    assert label.endswith("precision 0.714, recall 0.833")


def test_reliability_names_each_split_and_the_diagonal_once():
    from pneumo_exp.evaluation import plots

    figure = plots.reliability({"val": LABELS, "test": LABELS[::-1]}, {"val": PROBS, "test": PROBS})
    _, labels = figure.axes[0].get_legend_handles_labels()
    assert labels == ["perfectly calibrated", "val (10 images)", "test (10 images)"]
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == labels


def test_learning_curves_show_auc_and_skip_a_curve_the_run_never_logged():
    from pneumo_exp.evaluation import plots

    history = {f"{split}{name}": [0.5, 0.6, 0.7] for name in plots.CURVES for split in ("", "val_")}
    figure = plots.learning_curves(history)
    shown = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == list(plots.CURVES) and "auc" in plots.CURVES
    assert all(len(ax.get_lines()) == 2 for ax in shown)  # train and validation
    assert figure.get_size_inches()[0] <= 10  # three panels a row: 900 px show it at 90% or more
    # an older run, resumed: no auc logged (record.epoch_history gives [] for it)
    older = plots.learning_curves(history | {"auc": [], "val_auc": []})
    shown = [ax.get_title() for ax in older.axes if ax.get_visible()]
    assert shown == [name for name in plots.CURVES if name != "auc"]
