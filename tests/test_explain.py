"""Grad-CAM and the images it is drawn on."""

import keras
import numpy as np

from pneumo_exp.evaluation import explain
from pneumo_exp.models import averaged, build, with_tta
from tests.helpers import make_config


def test_gradcam_gives_one_normalized_map_per_image_at_image_size():
    # the last spatial view before the head: seed_cnn's last block (BatchNorm, before its pooling
    # and dropout), resnet_small's last residual block (its ReLU, before global pooling)
    keras.utils.set_random_seed(0)
    for model_name, layer in (("seed_cnn", keras.layers.BatchNormalization),
                              ("resnet_small", keras.layers.ReLU)):
        cfg = make_config([f"model={model_name}"])
        model = build(cfg.model, cfg.regularization, (64, 64, 3))
        features = explain.feature_layer(model)
        assert isinstance(features, layer) and features.output.shape[1:3] == (4, 4)
        pixels = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
        sick, normal = (explain.gradcam(model, pixels, np.full(3, c)) for c in (1, 0))
        for maps in (sick, normal):
            assert maps.shape == (3, 64, 64)
            assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
        # the classes' evidence has opposite signs: where one map is cut to 0, the other shows
        assert (np.maximum(sick, normal).max(axis=(1, 2)) > 0.5).all() and not np.allclose(sick, normal)


def test_gradcam_of_a_tta_model_is_its_inner_models():
    cfg = make_config(["model=resnet_small"])
    model = build(cfg.model, cfg.regularization, (64, 64, 3))
    tta = with_tta(model, 0.05)
    assert explain.networks(tta) == [model] and explain.networks(model) == [model]
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    classes = np.array([1, 0])
    assert np.allclose(explain.gradcam(tta, pixels, classes), explain.gradcam(model, pixels, classes))


def test_figures_explain_the_class_the_scored_probability_gives_also_near_the_threshold(monkeypatch):
    # the class comes from the probabilities the run scored (with TTA and every member), not from a
    # second pass through the model: 0.5 and 0.4999 sit on either side of the threshold 0.5
    explained = []
    monkeypatch.setattr(explain, "gradcam",
                        lambda model, pixels, classes: explained.append(np.asarray(classes)) or
                        np.zeros(pixels.shape[:3]))
    labels = np.array([1, 0, 1, 0, 1, 0])
    probabilities = np.array([0.5, 0.4999, 0.4999, 0.5, 0.9, 0.1])
    images = np.zeros((6, 8, 8, 1), np.uint8)
    explain.figures(None, images, labels, probabilities, threshold=0.5, channels=1)
    picked = [explain.sample(labels, probabilities >= 0.5),
              explain.worst_mistakes(labels, probabilities, 0.5)]
    assert [c.tolist() for c in explained] == [(probabilities[i] >= 0.5).tolist() for i in picked]


def test_gradcam_of_an_ensemble_is_the_mean_of_its_members():
    cfg = make_config(["model=seed_cnn"])
    # Seeded: an untrained network's Grad-CAM can be all zero (negative evidence everywhere, cut by
    # the ReLU), and two all-zero maps would make the comparison below say nothing.
    keras.utils.set_random_seed(0)
    members = [build(cfg.model, cfg.regularization, (64, 64, 3)) for _ in range(2)]
    ensemble = with_tta(averaged(members), 0.05)
    assert explain.networks(ensemble) == members
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    # pneumonia for every image, so each member explains that class
    each = [explain.gradcam(member, pixels, np.ones(2)) for member in members]
    assert all(m.max() > 0.5 for member in each for m in member)  # every map shows something
    assert not np.allclose(each[0], each[1])
    assert np.allclose(explain.gradcam(ensemble, pixels, np.ones(2)), np.mean(each, axis=0), atol=1e-6)


def test_sample_takes_right_and_wrong_of_both_classes():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    predicted = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    picked = explain.sample(labels, predicted, per_kind=1)
    kinds = {(labels[i], predicted[i]) for i in picked}
    assert kinds == {(1, 1), (1, 0), (0, 0), (0, 1)} and len(picked) == 4
    assert np.array_equal(picked, explain.sample(labels, predicted, per_kind=1))  # fixed


def test_worst_mistakes_are_the_surest_wrong_ones_first():
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([0.99, 0.6, 0.05, 0.9, 0.1])
    assert explain.worst_mistakes(labels, probs, 0.5).tolist() == [0, 2, 1]
