import urllib.error

import keras
import numpy as np
import pytest

from pneumo_exp import UserError, data
from pneumo_exp.models import averaged, build, with_tta
from pneumo_exp.run import run_experiment
from tests.helpers import TINY, choice_keys, choices, make_config, runs_in


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("regularization, batch_norms, dropouts", [
    ("bn_dropout", 7, 5), ("bn_only", 7, 0), ("dropout_only", 0, 5), ("none", 0, 0)])
def test_regularization_switch_removes_layers(regularization, batch_norms, dropouts):
    cfg = make_config([f"regularization={regularization}"])
    model = build(cfg.model, cfg.regularization, (32, 32, 3))
    types = layer_types(model)
    assert types.count("BatchNormalization") == batch_norms
    assert types.count("Dropout") == dropouts
    assert types.count("SeparableConv2D") == 8 and types.count("Conv2D") == 2
    assert [layer.units for layer in model.layers if type(layer).__name__ == "Dense"] == [
        512, 128, 64, 1]
    assert model.output_shape == (None, 1)


def test_seed_cnn_dropout_rates_follow_the_notebook():
    cfg = make_config([])
    model = build(cfg.model, cfg.regularization, (180, 180, 3))
    rates = [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.2, 0.2, 0.7, 0.5, 0.3]


def test_dropout_scale_multiplies_the_rates():
    cfg = make_config(["regularization.dropout_scale=0.5"])
    model = build(cfg.model, cfg.regularization, (32, 32, 3))
    assert [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"] == [
        0.1, 0.1, 0.35, 0.25, 0.15]


def test_resnet_small_is_residual_and_follows_the_regularization_switch():
    cfg = make_config(["model=resnet_small"])
    model = build(cfg.model, cfg.regularization, (64, 64, 1))
    types = layer_types(model)
    assert types.count("Add") == 4 and "BatchNormalization" in types
    assert [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"] == [0.3]
    assert model.output_shape == (None, 1)
    bare = make_config(["model=resnet_small", "regularization=none"])
    types = layer_types(build(bare.model, bare.regularization, (64, 64, 1)))
    assert "BatchNormalization" not in types and "Dropout" not in types


def test_densenet_small_concatenates_every_earlier_map_and_follows_the_regularization_switch():
    cfg = make_config(["model=densenet_small"])
    model = build(cfg.model, cfg.regularization, (64, 64, 1))
    types = layer_types(model)
    assert types.count("Concatenate") == 12 and types.count("AveragePooling2D") == 2  # 3 blocks of 4
    widths = [layer.output.shape[-1] for layer in model.layers if type(layer).__name__ == "Concatenate"]
    assert widths[:4] == [36, 48, 60, 72]  # the stem's 24 maps, and 12 more from each layer
    assert [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"] == [0.3]
    assert model.output_shape == (None, 1)
    bare = make_config(["model=densenet_small", "regularization=none"])
    types = layer_types(build(bare.model, bare.regularization, (64, 64, 1)))
    assert "BatchNormalization" not in types and "Dropout" not in types


@pytest.mark.parametrize("model", [c for c in choices("model") if "input_norm" in choice_keys("model", c)])
def test_standardized_input_removes_a_global_exposure_change_that_rescaled_input_keeps(model):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(40, 160, (4, 32, 32, 1)).astype("float32")
    exposed = 1.4 * pixels + 20  # brighter, more contrast; still within 0..255
    seen = {}
    for input_norm in ("rescale", "standardize"):
        cfg = make_config([f"model={model}", f"model.input_norm={input_norm}"])
        net = build(cfg.model, cfg.regularization, (32, 32, 1))
        first = keras.Model(net.input, net.layers[1].output)  # what the first convolution sees
        seen[input_norm] = [first.predict(x, verbose=0) for x in (pixels, exposed)]
    np.testing.assert_allclose(seen["rescale"][0], pixels / 255, rtol=1e-6)
    assert np.abs(np.subtract(*seen["rescale"])).min() > 0.05
    np.testing.assert_allclose(*seen["standardize"], atol=1e-4)
    np.testing.assert_allclose(seen["standardize"][0].mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(seen["standardize"][0].std(axis=(1, 2, 3)), 1, atol=1e-3)


def test_keras_applications_backbone_from_scratch():
    cfg = make_config(["model=keras_app", "model.backbone=MobileNetV3Small"])
    model = build(cfg.model, cfg.regularization, (32, 32, 3))
    assert model.output_shape == (None, 1) and model.layers[1].name.startswith("MobileNetV3Small")


def offline(monkeypatch, folder):
    """No ImageNet weights in Keras' cache (now `folder`), and no network to download them."""
    def refused(url, *args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(folder))  # no weights cached
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", refused)  # what get_file downloads with


def test_imagenet_weights_without_a_network_are_one_line(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path)
    cfg = make_config(["model=keras_app", "model.weights=imagenet"])
    with pytest.raises(UserError, match=r"^cannot download the ImageNet weights of EfficientNetB0 "
                       r"\(\[Errno 111\] Connection refused\): connect to the network once "
                       r"\(Keras keeps them in \S+/models\) or use model.weights=null$"):
        build(cfg.model, cfg.regularization, (32, 32, 3))


def test_imagenet_weights_without_a_network_stop_the_run_before_its_data_loads(monkeypatch, tmp_path, store,
                                                                               npz_overrides):
    offline(monkeypatch, tmp_path)
    monkeypatch.setattr(data, "load", lambda cfg: pytest.fail("the data loaded before the weights came"))
    overrides = [*npz_overrides, *TINY, *store, "model=keras_app", "model.weights=imagenet",
                 "data.channels=3"]
    with pytest.raises(UserError, match=r"^cannot download the ImageNet weights of EfficientNetB0"):
        run_experiment(make_config(overrides), overrides)
    assert [run.info.status for run in runs_in(tmp_path / "mlflow.db")] == ["FAILED"]


def shifted(pixels, dy, dx):
    """`pixels` moved dy rows and dx columns towards the top-left, zero-filled (numpy, as a check)."""
    out = np.zeros_like(pixels)
    h, w = pixels.shape[1:3]
    out[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        pixels[:, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def test_tta_averages_the_image_and_its_four_shifts():
    cfg = make_config(["model=resnet_small", "train.tta_shift=0.1"])
    keras.utils.set_random_seed(0)  # untrained weights: fixed, so the test is repeatable
    model = build(cfg.model, cfg.regularization, (40, 40, 1))
    assert with_tta(model, 0) is model and with_tta(model, 0.01) is model  # under half a pixel: off
    tta = with_tta(model, cfg.train.tta_shift)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 1)).astype("float32")
    views = [pixels] + [shifted(pixels, dy, dx) for dy, dx in ((4, 0), (-4, 0), (0, 4), (0, -4))]
    expected = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    assert np.allclose(tta.predict(pixels, verbose=0), expected, atol=1e-5)
    plain = model.predict(pixels, verbose=0)
    assert np.ptp(plain) > 1e-4 and not np.allclose(expected, plain, atol=1e-5)  # the views differ


def test_an_ensemble_scores_the_mean_of_its_members():
    cfg = make_config(["model=resnet_small"])
    keras.utils.set_random_seed(0)  # untrained weights: fixed, so the test is repeatable
    members = [build(cfg.model, cfg.regularization, (32, 32, 1)) for _ in range(3)]
    assert averaged(members[:1]) is members[0]
    ensemble = averaged(members)
    assert ensemble.name == "resnet_small_x3"
    assert [m.name for m in members] == ["resnet_small", "resnet_small_2", "resnet_small_3"]
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    each = [m.predict(pixels, verbose=0) for m in members]
    assert np.ptp(np.ravel(each)) > 1e-4  # the members differ
    assert np.allclose(ensemble.predict(pixels, verbose=0), np.mean(each, axis=0), atol=1e-6)
