import pytest
from conftest import make_config

from pneumo_exp.models import build


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


def test_keras_applications_backbone_from_scratch():
    cfg = make_config(["model=keras_app", "model.backbone=MobileNetV3Small"])
    model = build(cfg.model, cfg.regularization, (32, 32, 3))
    assert model.output_shape == (None, 1) and model.layers[1].name.startswith("MobileNetV3Small")
