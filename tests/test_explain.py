"""Grad-CAM and the images it is drawn on."""

import keras
import numpy as np

from pneumo_exp.evaluation import explain, plots
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
    explain.figures(None, images, labels, probabilities, threshold=0.5, channels=1, names=None)
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


def test_grid_titles_carry_the_true_class_the_file_and_the_probability_with_its_decision(monkeypatch):
    monkeypatch.setattr(explain, "gradcam", lambda model, pixels, classes: np.zeros(pixels.shape[:3]))
    labels = np.array([0, 1, 1, 0])
    probabilities = np.array([0.97, 0.03, 0.9, 0.1])
    names = np.array(["test/NORMAL/IM-0123-0001.jpeg", "test/PNEUMONIA/person1946_bacteria_4874.jpeg",
                      "test/PNEUMONIA/person1_virus_6.jpeg",
                      "extra/site/a_file_name_far_too_long_to_stand_above_one_image.png"])
    images = np.zeros((4, 64, 64, 1), np.uint8)
    grids = explain.figures(None, images, labels, probabilities, threshold=0.5, channels=1, names=names)
    worst = grids["worst_misclassified"]  # the two mistakes, surest first
    titles = [ax.title for ax in worst.axes if ax.get_title()]
    assert [t.get_text() for t in titles] == [
        "true NORMAL\nIM-0123-0001.jpeg\np=0.970 → pneumonia",
        "true PNEUMONIA\nperson1946_bacteria_4874.jpeg\np=0.030 → normal"]
    assert all(t.get_fontsize() >= 10 for t in titles)  # 10 pt at the 100 dpi figures are saved at
    assert "threshold" in worst.get_suptitle() and "0.500" in worst.get_suptitle()
    shown = {t.get_text().split("\n")[1] for ax in grids["gradcam"].axes if (t := ax.title).get_text()}
    assert "a_file_name_far…ve_one_image.png" in shown and len(max(shown, key=len)) <= 32
    grids["gradcam"].canvas.draw()  # every title fits above its image, at most four images a row
    assert all(ax.title.get_window_extent().width <= ax.get_window_extent().width * 1.1
               for ax in grids["gradcam"].axes if ax.get_title())
    eight = plots.heatmaps(np.zeros((8, 64, 64, 1)), np.zeros((8, 64, 64)), ["title"] * 8)
    assert eight.get_size_inches()[0] <= 10.5  # two rows of four: 900 px show it at 85% or more
    unnamed = explain.figures(None, images, labels, probabilities, threshold=0.5, channels=1, names=None)
    unnamed_titles = [ax.get_title() for ax in unnamed["worst_misclassified"].axes if ax.get_title()]
    assert [title.split("\n")[1] for title in unnamed_titles] == ["index 0", "index 1"]
