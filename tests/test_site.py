"""A new site: the applicability check of each label-free method (a mixture of validation's classes
or not), Tent, the shift warning's advice, a site's labelled sample (never scored, patient-disjoint
from what is), and the threshold rules that calibrate."""

import keras
import numpy as np
import pytest

from pneumo_exp.data import Split
from pneumo_exp.evaluation import adapt, adaptation, applicability, labelled, measure, tent
from pneumo_exp.evaluation.adaptation import Adapted
from pneumo_exp.evaluation.applicability import Verdict
from pneumo_exp.evaluation.calibration import fit_calibration
from pneumo_exp.evaluation.site_fit import fit_site
from tests.helpers import QUIET, held_out_scored, make_config
from tests.test_adapt import bn_net, images, shifted_data


def scored(labels: np.ndarray, rng: np.random.Generator, normal_shift: float = 0.0) -> np.ndarray:
    """Probabilities of a model whose logit is N(+4, 1.5) for pneumonia and N(-4, 1.5) for normal
    (validation's saturated look); normal_shift moves the normals' logits (a covariate shift: the
    site's normals look like pneumonia to the model)."""
    logits = rng.normal(np.where(labels == 1, 4.0, -4.0 + normal_shift), 1.5)
    return 1 / (1 + np.exp(-logits))


ALPHA = make_config([]).eval.alpha  # the default level: a true mixture is refused this often


def verdicts(prevalence: float, normal_shift: float, repeats: int = 20) -> list[Verdict]:
    """The check's verdict on `repeats` sets of 262 images (site_b's size) against a validation
    split of 918 at 74% pneumonia (the Kermany folder's)."""
    rng = np.random.default_rng(0)
    val_labels = (rng.random(918) < 0.74).astype(int)
    val_p = scored(val_labels, rng)
    calibration = fit_calibration(val_labels, val_p)
    found = []
    for _ in range(repeats):
        labels = (rng.random(262) < prevalence).astype(int)
        found.append(applicability.check(scored(labels, rng, normal_shift), val_p, val_labels, calibration,
                                         alpha=ALPHA, min_images=50))
    return found


def test_the_check_accepts_a_pure_prevalence_shift():
    accepted = [v.applies for v in verdicts(prevalence=0.5, normal_shift=0.0)]
    assert sum(accepted) >= 20 * (1 - ALPHA) - 3  # about ALPHA of them rejected by chance


def test_the_check_rejects_a_covariate_shift():
    found = verdicts(prevalence=0.5, normal_shift=4.0)
    assert not any(v.applies for v in found)
    assert "not a mixture of validation's classes" in found[0].reason


def test_the_check_refuses_a_set_too_small_to_adapt_to():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 50)
    v = applicability.check(scored(labels[:3], rng), scored(labels, rng), labels,
                            fit_calibration(labels, scored(labels, rng)), alpha=0.05, min_images=50)
    assert not v.applies and v.reason == "3 images, fewer than eval.min_images=50"


def verdict(applies: bool) -> Verdict:
    return Verdict(applies, 0.1, 0.5 if applies else 0.001, 0.7, "" if applies else "does not fit")


def adapted(**applies: bool) -> dict[str, Adapted]:
    return {m: Adapted(np.zeros(1), 0.5, np.nan, verdict(ok))
            for m, ok in applies.items()}


def test_the_warning_recommends_only_a_method_that_applies():
    assert adaptation.advice("site_b", adapted(prior=False, bn=True, tent=False)) == (
        "bn applies to it: score it with eval.adapt=bn")
    nothing = adaptation.advice("site_b", adapted(prior=False, bn=False))
    assert nothing.startswith("no label-free adaptation applies to it (checked: prior, bn): label a sample")
    assert "eval.labelled={site_b:50}" in nothing
    assert "eval.adapt=all" in adaptation.advice("site_b", {})


def test_a_method_that_does_not_apply_is_withheld_logged_and_tagged(short_tent):
    cfg = make_config(["eval.adapt=all", "eval.min_images=1000", "data.channels=1", *QUIET])
    data, net = shifted_data(), bn_net()
    val_p = net.predict(images_of(data.val), verbose=0).reshape(-1)
    found = held_out_scored(cfg, net, data, 0.5, val_p)
    metrics, tags = found.metrics, found.tags
    for method in ("prior", "bn", "tent"):
        assert metrics[f"test_{method}_applies"] == 0.0
        assert f"test_{method}_accuracy" not in metrics and f"extra_site_b_{method}_auc" not in metrics
    assert {"test:prior", "extra_site_b:tent"} <= set(tags["adapt_not_applicable"].split(","))


def images_of(split: Split) -> np.ndarray:
    return split.images.astype("float32")


def test_tent_moves_only_batchnorm_scales_and_offsets_and_puts_them_back(short_tent):
    net, pixels = bn_net(), images(64)
    before = [w.numpy() for w in net.weights]
    affine = {id(w) for w in tent.affine_parameters(net)}
    with tent.tent_adapted(net, pixels) as count:
        assert count == len(affine) > 0
        changed = {id(w) for w, b in zip(net.weights, before, strict=True)
                   if not np.array_equal(w.numpy(), b)}
        assert changed and {id(w) for w in net.trainable_weights} & changed <= affine
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, net.weights, strict=True))


def test_tent_lowers_the_entropy_of_the_sets_predictions():
    net, pixels = bn_net(), images(64, brightness=60.0)
    with adapt.batchnorm_adapted(net, pixels):
        bn_entropy = float(tent.mean_entropy(net(pixels, training=False)))
    with tent.tent_adapted(net, pixels):
        assert float(tent.mean_entropy(net(pixels, training=False))) < bn_entropy


def site(patients: int = 40, per_patient: int = 2) -> Split:
    """A site of `patients` patients with `per_patient` images each, 60% of them with pneumonia."""
    labels = np.repeat((np.arange(patients) % 5 < 3).astype(np.int32), per_patient)
    ids = np.repeat([f"person{i}" for i in range(patients)], per_patient)
    return Split(np.zeros((len(labels), 8, 8, 1), np.uint8), labels, ids)


def test_a_drawn_sample_takes_whole_patients_and_both_classes():
    split = site()
    sample = labelled.drawn(split, 10, seed=3)
    assert 10 <= sample.sum() <= 11 and len(np.unique(split.labels[sample])) == 2
    assert not set(split.patients[sample]) & set(split.patients[~sample])


def test_the_labelled_sample_is_never_scored(monkeypatch):
    """The sample's probabilities are NaN where the rest is scored: one of them scored would make
    the metrics NaN. The sample is fitted on the model's own probabilities of its images."""
    split = site()
    cfg = make_config(["eval.labelled={test:10}", *QUIET])
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation="sigmoid")])
    rng = np.random.default_rng(0)
    plain = np.clip(rng.normal(0.3 + 0.4 * split.labels, 0.2), 0.01, 0.99)
    sample = labelled.drawn(split, 10, cfg.seed)
    monkeypatch.setattr(labelled, "site_outputs",
                        lambda *args: ((np.where(sample, np.nan, plain), None), (plain[sample], None)))
    metrics = labelled.scored(cfg, model, split, np.where(sample, np.nan, plain), 0.5, 10)
    assert metrics["labelled_n"] == sample.sum() and metrics["labelled_scored_n"] == len(plain) - sample.sum()
    assert all(np.isfinite(v) for v in metrics.values())


def test_a_sample_folder_leaves_its_patients_out_of_the_scored_rest():
    split = site()
    rest = labelled.rest_of(split, np.array(["person3", "person7", ""]))
    assert not {"person3", "person7"} & set(split.patients[rest]) and rest.sum() == len(rest) - 4


def test_the_sample_recalibrates_the_threshold_to_the_sites_classes():
    rng = np.random.default_rng(0)
    labels = (np.arange(200) % 3 != 0).astype(int)
    shifted = np.clip(rng.normal(0.75 + 0.2 * labels, 0.05), 0.01, 0.99)  # every normal above 0.5
    fit = fit_site(labels, shifted)
    assert 0.75 < fit.threshold < 0.95
    assert measure.thresholded_metrics(labels, shifted, fit.threshold)["accuracy"] > 0.9


def revision_case(signal: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, the model's probabilities (AUC about .9) and 32 head inputs of a site, of which the
    first carries `signal` times more of the label than the model's logit does (0: noise only)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 != 0).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(2.0 * labels - 1.0, 1.2)))
    inputs = rng.normal(size=(n, 32))
    inputs[:, 0] += signal * (labels - 0.5)
    return labels, p, inputs


def test_a_head_revision_learns_from_the_sample_what_the_logit_misses():
    labels, p, inputs = revision_case(signal=4.0, n=300)
    fit = fit_site(labels[:60], p[:60], inputs[:60], None, seed=0)
    assert np.isfinite(fit.revision.shrinkage)
    revised, cut = fit.scores(p[60:], inputs[60:])
    gain = measure.thresholded_metrics(labels[60:], revised, cut)["accuracy"]
    platt = measure.thresholded_metrics(labels[60:], p[60:], fit.threshold)["accuracy"]
    assert gain > platt + 0.05


def test_head_inputs_of_noise_leave_the_model_recalibrated_alone():
    """Chosen on the sample alone: where the inputs add nothing, every revision predicts its held-out
    images worse than the logit alone."""
    labels, p, inputs = revision_case(signal=0.0, n=60)
    fit = fit_site(labels, p, inputs, np.array([f"person{i // 2}" for i in range(60)]), seed=0)
    assert fit.revision.shrinkage >= 64


@pytest.mark.parametrize(("rule", "calibrated"), [("calibrated", 0.5), ("balanced", None)])
def test_the_calibrating_threshold_rules_cut_platts_probability(rule, calibrated):
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.74).astype(int)
    p = scored(labels, rng)
    fit = fit_calibration(labels, p)
    threshold = measure.choose_threshold(labels, p, rule, 0.95)
    assert float(fit(threshold)) == pytest.approx(calibrated or fit.prior, abs=1e-6)


def test_a_sample_that_leaves_nothing_to_score_is_said_and_left_out(capsys):
    split, cfg = site(), make_config(["eval.labelled={test:1000}", *QUIET])
    assert labelled.scored(cfg, None, split, np.full(len(split.labels), 0.5), 0.5, 1000) == {}
    assert "leaves 0 of the set's 80 to score" in capsys.readouterr().out
