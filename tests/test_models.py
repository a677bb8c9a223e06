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
