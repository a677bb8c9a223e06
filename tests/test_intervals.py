"""The bootstrap intervals of a run's test scores: the resampled metrics are the real ones, patients
(not images) are resampled, and the intervals have the width that sampling theory predicts."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumo_exp.evaluation.intervals import TOO_FEW, clusters, counts, described, metrics_of, of_test_scores


def scored_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (62.5% pneumonia, as the Kermany test) and probabilities rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.625).astype(int)
    return labels, np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2)


def test_resampled_metrics_agree_with_scikit_learn_for_any_cluster_weights():
    labels, probabilities = scored_images(300)
    patients = np.array([f"p{i // 3}" for i in range(300)])
    cluster = clusters(patients)
    c = counts(labels, probabilities, cluster, 0.5)
    weights = np.random.default_rng(1).integers(0, 4, cluster.max() + 1).astype(float)
    per_image = weights[cluster]  # a resample drawing patient c w times weighs its images w times
    got = metrics_of(weights, c)
    predicted = probabilities >= 0.5
    assert got["auc"] == pytest.approx(roc_auc_score(labels, probabilities, sample_weight=per_image))
    assert got["recall"] == pytest.approx(np.sum(per_image * (predicted & (labels == 1)))
                                          / np.sum(per_image * (labels == 1)))
    assert got["specificity"] == pytest.approx(np.sum(per_image * (~predicted & (labels == 0)))
                                               / np.sum(per_image * (labels == 0)))
    assert got["accuracy"] == pytest.approx(np.average(predicted == labels, weights=per_image))


def width(interval: dict[str, float], metric: str) -> float:
    return interval[f"test_{metric}_ci_high"] - interval[f"test_{metric}_ci_low"]


def test_image_level_interval_has_the_binomial_width():
    labels, probabilities = scored_images(600)
    interval = of_test_scores(labels, probabilities, np.full(600, ""), 0.5, seed=0)
    accuracy = np.mean((probabilities >= 0.5) == labels)
    binomial = 2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / 600)
    assert width(interval, "accuracy") == pytest.approx(binomial, rel=0.15)
    assert interval["test_accuracy_ci_low"] < accuracy < interval["test_accuracy_ci_high"]


def test_images_of_one_patient_are_resampled_together():
    """Four copies of each image under one patient carry no more information than the image: the
    patient bootstrap gives the interval of the single images; treated as 4 x more independent
    images, the interval would be half as wide."""
    labels, probabilities = scored_images(200)
    single = of_test_scores(labels, probabilities, np.full(200, ""), 0.5, seed=0)
    copies = np.repeat(labels, 4), np.repeat(probabilities, 4)
    by_patient = of_test_scores(*copies, np.repeat([f"p{i}" for i in range(200)], 4), 0.5, seed=0)
    as_images = of_test_scores(*copies, np.full(800, ""), 0.5, seed=0)
    for metric in ("auc", "recall", "specificity", "accuracy"):
        assert width(by_patient, metric) == pytest.approx(width(single, metric), rel=0.2), metric
        assert width(as_images, metric) == pytest.approx(width(single, metric) / 2, rel=0.25), metric


def test_the_same_seed_gives_the_same_intervals():
    labels, probabilities = scored_images(100)
    patients = np.full(100, "")
    assert of_test_scores(labels, probabilities, patients, 0.5, 3) == of_test_scores(
        labels, probabilities, patients, 0.5, 3)
    assert of_test_scores(labels, probabilities, patients, 0.5, 3) != of_test_scores(
        labels, probabilities, patients, 0.5, 4)


def test_a_class_of_one_patient_gets_no_interval_and_says_why():
    """A tiny or odd test split (one patient with pneumonia) cannot be resampled within that class:
    no interval, and the tag says why, rather than a crash after training."""
    labels, probabilities = scored_images(60)
    patients = np.where(labels == 1, "p1", np.char.add("n", np.arange(60).astype(str)))
    assert of_test_scores(labels, probabilities, patients, 0.5, seed=0) == {}
    assert described(patients, {}) == TOO_FEW
    assert described(patients, {"test_auc_ci_low": 0.9}).endswith("(unit: patient)")
