"""Augmentation changes training batches only, within the configured ranges."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_config

from pneumo_exp import augment, config
from pneumo_exp.config import UserError


def batches(n: int = 8) -> tf.data.Dataset:
    pixels = np.random.default_rng(0).uniform(0, 255, (n, 32, 32, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((pixels, np.ones(n, "float32"))).batch(4)


def test_xray_augmentation_changes_pixels_keeps_labels_range_and_shape():
    cfg = make_config(["augment=xray"])
    names = [type(layer).__name__ for layer in augment.layers_for(cfg.augment, 0)]
    assert names == ["RandomRotation", "RandomTranslation", "RandomZoom", "RandomContrast",
                     "RandomBrightness"]  # no flip by default
    original = np.concatenate([x for x, _ in batches().as_numpy_iterator()])
    changed, labels = zip(*augment.apply(batches(), cfg.augment, 0).as_numpy_iterator(), strict=True)
    changed = np.concatenate(changed)
    assert changed.shape == original.shape and not np.allclose(changed, original)
    assert changed.min() >= 0 and changed.max() <= 255
    assert np.concatenate(labels).tolist() == [1.0] * 8


@pytest.mark.parametrize(("choice", "contrast"), [("xray", 0.2), ("xray_strong", 0.4)])
def test_contrast_goes_both_ways(choice: str, contrast: float):
    """augment.contrast=f scales contrast by 1-f..1+f (a lone factor makes Keras raise it only)."""
    cfg = make_config([f"augment={choice}"] + [f"augment.{k}=0" for k in ("rotation_degrees", "shift",
                                                                          "zoom", "brightness")]).augment
    assert cfg.contrast == contrast
    pixels = np.random.default_rng(0).uniform(100, 150, (64, 8, 8, 1)).astype("float32")  # never clipped
    ds = tf.data.Dataset.from_tensor_slices((pixels, np.ones(64, "float32"))).batch(64)
    changed = next(augment.apply(ds, cfg, 0).as_numpy_iterator())[0]
    ratio = changed.std(axis=(1, 2, 3)) / pixels.std(axis=(1, 2, 3))
    assert ratio.min() < 1 - contrast / 4 and ratio.max() > 1 + contrast / 4  # lowered and raised
    assert ratio.min() >= 1 - contrast - 1e-4 and ratio.max() <= 1 + contrast + 1e-4


def test_no_augmentation_is_the_identity_and_flip_is_opt_in():
    assert augment.apply(batches(), make_config([]).augment, 0) is not None
    assert augment.layers_for(make_config([]).augment, 0) == []
    flip = make_config(["augment=xray", "augment.horizontal_flip=true"]).augment
    assert type(augment.layers_for(flip, 0)[-1]).__name__ == "RandomFlip"


def test_bad_augmentation_values_are_one_line_errors():
    with pytest.raises(UserError, match=r"^augment.zoom=1.5 is invalid: use a number in \[0, 1\)"):
        config.check(make_config(["augment=xray", "augment.zoom=1.5"]))


def test_a_pass_stopped_early_does_not_change_later_augmentation():
    """A discarded iterator (a prefetch running ahead, a sample taken for a figure) must not shift
    the random draws of the passes after it, or a seed would not reproduce its run."""
    cfg = make_config(["augment=xray"]).augment

    def second_pass(batches_taken_first: int) -> np.ndarray:
        ds = augment.apply(batches(24), cfg, 0)
        for _ in zip(range(batches_taken_first), ds, strict=False):
            pass
        return np.concatenate([x.numpy() for x, _ in ds])

    assert np.array_equal(second_pass(1), second_pass(5))
