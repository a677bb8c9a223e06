"""Label-free adaptation (pneumo_exp/adapt.py): EM finds a known prevalence, AdaBN sets each
BatchNorm layer to the scored set's statistics and leaves a model without BatchNorm alone, and a
set's labels never reach what is adapted."""

import csv

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from pneumo_exp import UserError, models, predict
from pneumo_exp.data import Data, Split
from pneumo_exp.data.pipeline import model_input
from pneumo_exp.evaluation import adapt, adaptation, calibration, tent
from pneumo_exp.models import resnet_small
from pneumo_exp.models.settings import Regularization
from pneumo_exp.run import run_experiment
from pneumo_exp.tracking import results
from tests.helpers import QUIET, TENT_STEPS, held_out_scored, make_config, metrics_of, store_overrides

SOURCE = 0.74  # the Kermany training share of pneumonia


def posteriors(prevalence: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels at `prevalence` and the exact posteriors at SOURCE of a score that is N(+1, 1) for
    pneumonia and N(-1, 1) for normal: the likelihood ratio is exp(2x), known in closed form."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(int)
    x = rng.normal(2 * labels - 1, 1)
    odds = np.exp(2 * x) * SOURCE / (1 - SOURCE)
    return labels, odds / (1 + odds)


@pytest.mark.parametrize("prevalence", [0.5, 0.625, 0.74, 0.85])
def test_em_recovers_a_known_prevalence_from_calibrated_posteriors(prevalence):
    labels, p = posteriors(prevalence, 20_000)
    assert calibration.estimate_prevalence(p, SOURCE) == pytest.approx(labels.mean(), abs=0.01)


def test_reweighting_is_bayes_rule_and_moves_nothing_at_the_source_prior():
    _, p = posteriors(0.5, 1000)
    assert calibration.reweighted(p, SOURCE, SOURCE) == pytest.approx(p)
    exact = 1 / (1 + (1 - p) / p * (SOURCE / (1 - SOURCE)))  # posterior odds / source prior odds
    assert calibration.reweighted(p, SOURCE, 0.5) == pytest.approx(exact)


def test_calibration_fits_probabilities_that_vary_in_the_fifth_decimal():
    """A barely trained model scores everything about 0.9088 (seen on the Kermany folder): the fit
    must still order them and give validation's prior as the calibrated mean."""
    labels, p = posteriors(SOURCE, 2000)
    squeezed = 0.90876 + 1e-5 * (p - 0.5)
    fit = calibration.fit_calibration(labels, squeezed)
    assert fit.slope > 1e4 and fit.prior == pytest.approx(labels.mean())
    assert np.mean(fit(squeezed)) == pytest.approx(labels.mean(), abs=0.01)
    assert calibration.fit_calibration(labels, np.full(2000, 0.9)).slope == 1.0  # no spread: identity


def small_resnet(batch_norm: bool) -> keras.Model:
    """resnet_small of widths 4, 8 on 32 px single-channel images, without Dropout."""
    settings = resnet_small.ResnetSmall(widths=[4, 8], head_dropout=0.0, input_norm="rescale")
    return resnet_small.build(settings, Regularization(batch_norm, False, 1.0), (32, 32, 1))


def bn_net(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return small_resnet(batch_norm=True)


def without_epsilon(net: keras.Model) -> keras.Model:
    """BatchNorm divides by sqrt(variance + epsilon): with epsilon 1e-3 a layer whose input varies
    little would not reach variance 1 even on its own statistics."""
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = 1e-12
    return net


def images(n: int = 48, brightness: float = 200.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(brightness, 30, (n, 32, 32, 1)), 0, 255).astype("float32")


def batchnorm_outputs(net: keras.Model, pixels: np.ndarray) -> list[np.ndarray]:
    """Each BatchNorm layer's output at inference, flattened to (values, channels)."""
    layers = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    outputs = keras.Model(net.input, [layer.output for layer in layers])(pixels, training=False)
    return [np.asarray(out).reshape(-1, out.shape[-1]) for out in outputs]


def test_adabn_normalizes_every_batchnorm_layer_on_the_set_and_restores_it_after():
    """A fresh network (scale 1, offset 0) normalizes with mean 0 and variance 1 only where its
    statistics are the set's: inside the block each layer's output on the set is standardized."""
    net, pixels = without_epsilon(bn_net()), images()
    before = [w.numpy() for w in net.weights]
    assert np.abs(batchnorm_outputs(net, pixels)[0].mean(axis=0)).max() > 0.3  # statistics of no set
    with adapt.batchnorm_adapted(net, pixels, batch_size=16) as adapted:
        assert adapted == len(batchnorm_outputs(net, pixels)) > 3
        for out in batchnorm_outputs(net, pixels):
            assert np.abs(out.mean(axis=0)).max() < 1e-3
            assert out.var(axis=0) == pytest.approx(np.ones(out.shape[1]), abs=0.01)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, net.weights, strict=True))


def test_adabn_reaches_an_ensembles_members_inside_tta_and_leaves_a_model_without_batchnorm_alone():
    ensemble = models.with_tta(models.averaged([bn_net(0), bn_net(1)]), 0.1)
    assert [net.name for net in adapt.batchnorm_networks(ensemble)] == ["resnet_small", "resnet_small_2"]
    keras.utils.set_random_seed(0)
    plain = small_resnet(batch_norm=False)
    pixels = images()
    expected = plain.predict(pixels, verbose=0)
    with adapt.batchnorm_adapted(plain, pixels) as adapted:
        assert adapted == 0 and np.array_equal(plain.predict(pixels, verbose=0), expected)


def shifted_data(labels_seed: int | None = None) -> Data:
    """Splits of images whose pneumonia carries a bright patch; the test split brighter (another
    scanner). labels_seed shuffles the test split's labels."""
    def split(n, brightness, seed):
        labels = (np.arange(n) % 4 != 0).astype(np.int32)  # 75% pneumonia
        pixels = images(n, brightness, seed)
        pixels[labels == 1, 8:20, 8:20] += 80
        return Split(np.clip(pixels, 0, 255).astype(np.uint8), labels, np.full(n, ""))

    data = Data(split(40, 100, 0), split(40, 100, 1), split(40, 140, 2), "fp", "official",
                extra={"site_b": split(40, 60, 3)})
    if labels_seed is not None:
        data.test.labels = np.random.default_rng(labels_seed).permutation(data.test.labels)
    return data


def test_a_sets_labels_never_reach_its_adapted_predictions(monkeypatch, short_tent):
    cfg = make_config(["eval.adapt=all", "eval.min_images=2", "eval.alpha=0.001", "data.channels=1", *QUIET])
    net, train = bn_net(), shifted_data().train  # briefly trained: its scores follow the labels, so
    net.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")  # any use of them would show
    net.fit(model_input(train.images, 1), train.labels, epochs=10, batch_size=8, verbose=0)
    seen = []
    adapted_predictions = adaptation.adapted_predictions

    def recording(*args):
        seen.append(adapted_predictions(*args))
        return seen[-1]

    monkeypatch.setattr(adaptation, "adapted_predictions", recording)
    results = []
    for labels_seed in (None, 1):
        data = shifted_data(labels_seed)
        val_p, test_p = (net.predict(model_input(s.images, 1), verbose=0).reshape(-1)
                         for s in (data.val, data.test))
        threshold = float(np.median(test_p))  # an untrained network: half its calls each way
        results.append(held_out_scored(cfg, net, data, threshold, val_p).metrics)
    plain, shuffled = seen[0], seen[2]  # the test split of each pass (the extra set's come second)
    assert set(plain) == {"prior", "bn", "tent"}
    for method in plain:
        assert np.array_equal(plain[method].probabilities, shuffled[method].probabilities), method
        assert plain[method].threshold == shuffled[method].threshold
    for key in ("test_estimated_prevalence", "bn_threshold", "tent_threshold"):
        assert results[0][key] == results[1][key]
    assert results[0]["test_tp"] != results[1]["test_tp"]  # the labels did change
    methods = ("prior", "bn", "tent")
    assert {f"extra_site_b_{method}_accuracy" for method in methods} <= set(results[0])


@pytest.mark.xdist_group("logged_run")
def test_bn_leaves_a_model_without_batchnorm_and_its_scores_as_they_were(logged_run):
    mlflow.set_tracking_uri(logged_run.uri)
    m = metrics_of(mlflow.get_run(logged_run.run_id))
    assert m["bn_threshold"] == m["threshold"]
    for key in ("auc", "accuracy", "specificity", "brier"):
        assert m[f"test_bn_{key}"] == pytest.approx(m[f"test_{key}"], abs=1e-6), key


@pytest.fixture(scope="module")
def adapted_run(tiny_npz, tmp_path_factory):
    """A BatchNorm network trained on the tiny npz with every adaptation scored (Tent in TENT_STEPS
    steps, as the tests that use it run it too). Those tests carry the xdist_group mark
    "adapted_run", so that one worker runs them all and the run is made once."""
    store = tmp_path_factory.mktemp("adapted_run")
    path, md5 = tiny_npz
    overrides = ["data=pneumoniamnist", f"data.path={path}", f"data.md5={md5}", "train.epochs=2",
                 "data.image_size=32", "regularization=bn_only", "eval.adapt=all", "eval.min_images=2",
                 "eval.alpha=0.001",  # below 1/201, the smallest p of the check's bootstrap: never rejects
                 "eval.labelled={test:6}", "eval.labelled_bn=true", "eval.labelled_head=true",
                 "tracking.log_figures=false", *store_overrides(store)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tent, "STEPS", TENT_STEPS)
        result = run_experiment(make_config(overrides), overrides)
    return result.run_id, f"sqlite:///{store}/mlflow.db"


@pytest.mark.xdist_group("adapted_run")
def test_a_run_logs_its_adapted_scores_beside_the_plain_ones(adapted_run):
    run_id, uri = adapted_run
    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(run_id)
    m = metrics_of(run)
    for method in ("prior", "bn", "tent"):
        assert {f"test_{method}_{k}" for k in ("accuracy", "auc", "specificity", "ece", "fit_p")} <= set(m)
    assert m["test_prior_auc"] == pytest.approx(m["test_auc"])  # re-weighting keeps the ranking
    assert 0 < m["test_estimated_prevalence"] < 1 and 0 < m["train_prevalence"] < 1
    assert {"bn_threshold", "calibration_slope", "bn_calibration_slope", "tent_threshold"} <= set(m)
    assert run.data.tags["shift_suspected"] in ("true", "false")


@pytest.mark.xdist_group("adapted_run")
def test_a_run_scores_the_rest_of_a_set_with_its_labelled_sample(adapted_run):
    run_id, uri = adapted_run
    mlflow.set_tracking_uri(uri)
    m = metrics_of(mlflow.get_run(run_id))
    assert 6 <= m["test_labelled_n"] <= 7 and m["test_labelled_scored_n"] == 16 - m["test_labelled_n"]
    assert {"test_labelled_accuracy", "test_labelled_plain_accuracy", "test_labelled_head_revised"} <= set(m)


@pytest.mark.xdist_group("adapted_run")
def test_predict_adapt_scores_a_folder_adapted_beside_the_plain_labels(adapted_run, tiny_npz, tmp_path,
                                                                       capsys, short_tent):
    run_id, uri = adapted_run
    with np.load(tiny_npz[0]) as npz:
        for i, image in enumerate(npz["test_images"]):
            Image.fromarray(image).save(tmp_path / f"t{i:02d}.png")
    rows = {}
    for method in ("prior", "bn", "tent"):
        out = tmp_path / f"{method}.csv"
        predict.main([f"runs:/{run_id}/model", str(tmp_path), "--adapt", method, "--out", str(out),
                      "--tracking-uri", uri])
        rows[method] = list(csv.DictReader(out.open()))
        said = capsys.readouterr().out
        assert f"adapted ({method}) labels at threshold" in said and "estimated pneumonia share" in said
    plain = tmp_path / "plain.csv"
    predict.main([f"runs:/{run_id}/model", str(tmp_path), "--out", str(plain), "--tracking-uri", uri])
    for table in rows.values():
        assert list(table[0]) == ["file", "probability", "label", "adapted_probability", "adapted_label"]
        assert [r["label"] for r in table] == [r["label"] for r in csv.DictReader(plain.open())]
        assert all(r["adapted_label"] in ("NORMAL", "PNEUMONIA") for r in table)
    assert [r["adapted_probability"] for r in rows["prior"]] != [r["probability"] for r in rows["prior"]]


def test_predict_says_in_one_line_what_a_run_lacks_for_an_adaptation(tmp_path):
    facts = predict.RunFacts("r1", 0.5, 0, {"threshold": 0.5}, {})
    with pytest.raises(UserError, match=r"^--adapt prior: run r1 logged no operating point for it: train "
                                        r"with eval.adapt=prior \(or all\) with this version$"):
        facts.operating_points("prior")
    facts.metrics.update(calibration_slope=2.0, calibration_intercept=0.1, val_prevalence=0.74)
    with pytest.raises(UserError, match=r"^--adapt tent: run r1 logged no operating point for it"):
        facts.operating_points("tent")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(UserError, match=r"^--adapt prior: run r1 logged no adaptation/validation_scores.csv, "
                                        r"which the applicability check needs: retrain it with this "
                                        r"version$"):
        facts.operating_points("prior")


def test_a_runs_plain_test_scores_leave_out_each_adaptation_the_removed_both_too():
    m = {"test_auc": 0.9, "test_accuracy": 0.8, "test_auc_ci_low": 0.85, "test_tp": 3.0,
         "test_prior_accuracy": 0.7, "test_both_accuracy": 0.6, "test_labelled_accuracy": 0.5}
    assert results.test_scores(m) == {"test_auc": 0.9, "test_accuracy": 0.8}
    assert results.test_scores(m, "test_both_") == {"test_both_accuracy": 0.6}
