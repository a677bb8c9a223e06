"""Augmentation changes training batches only, within the configured ranges."""

import numpy as np
import pytest
import tensorflow as tf

from pneumo_exp import config
from pneumo_exp.config import UserError
from pneumo_exp.evaluation import plots
from pneumo_exp.models import augment
from tests.helpers import make_config


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
    plain = batches()
    assert augment.apply(plain, make_config([]).augment, 0) is plain
    assert augment.layers_for(make_config([]).augment, 0) == []
    flip = make_config(["augment=xray", "augment.horizontal_flip=true"]).augment
    assert type(augment.layers_for(flip, 0)[-1]).__name__ == "RandomFlip"


def test_mixup_blends_each_image_with_its_label_and_is_off_by_default():
    assert make_config(["augment=xray"]).augment.mixup == 0
    cfg = make_config(["augment=xray", "augment.mixup=0.2"] + [f"augment.{k}=0" for k in (
        "rotation_degrees", "shift", "zoom", "contrast", "brightness")]).augment
    labels = np.tile([0.0, 1.0], 32).astype("float32")
    pixels = np.broadcast_to(labels[:, None, None, None] * 255, (64, 4, 4, 1))  # an image shows its label
    ds = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(64)
    mixed_pixels, mixed_labels = next(augment.apply(ds, cfg, 0).as_numpy_iterator())
    assert mixed_labels.shape == (64,)
    np.testing.assert_allclose(mixed_pixels.mean(axis=(1, 2, 3)) / 255, mixed_labels, atol=1e-5)
    assert ((mixed_labels > 0.01) & (mixed_labels < 0.99)).any()  # some images really are blends
    titles = [ax.get_title() for ax in plots.image_grid(mixed_pixels, mixed_labels).axes]
    assert any(title.endswith(" PNEUMONIA") and title[0].isdigit() for title in titles)


def test_erasing_replaces_one_rectangle_per_chosen_image_and_is_off_by_default():
    assert make_config(["augment=xray"]).augment.erasing == 0

    def erased(probability: float) -> np.ndarray:
        cfg = make_config(["augment=xray", f"augment.erasing={probability}"] + [f"augment.{k}=0" for k in (
            "rotation_degrees", "shift", "zoom", "contrast", "brightness")]).augment
        assert type(augment.layers_for(cfg, 0)[-1]).__name__ == "RandomErasing"
        flat = np.full((64, 20, 20, 1), 128, "float32")  # noise never leaves a patch at exactly 128
        ds = tf.data.Dataset.from_tensor_slices((flat, np.ones(64, "float32"))).batch(64)
        return next(augment.apply(ds, cfg, 0).as_numpy_iterator())[0][..., 0] != 128

    for changed in erased(1.0):  # every image: one filled rectangle, each side 14-57% of the image's
        rows, cols = np.nonzero(changed)
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and 2 <= box.shape[0] <= 12 and 2 <= box.shape[1] <= 12
    touched = erased(0.5).any(axis=(1, 2))
    assert 16 < touched.sum() < 48  # about half the images


def test_bad_augmentation_values_are_one_line_errors():
    with pytest.raises(UserError, match=r"^augment.zoom=1.5 is invalid: use a number in \[0, 1\)"):
        config.check(make_config(["augment=xray", "augment.zoom=1.5"]))
    with pytest.raises(UserError, match=r"^augment.mixup=2 is invalid: use a MixUp alpha in \[0, 1\]"):
        config.check(make_config(["augment=xray", "augment.mixup=2"]))
    with pytest.raises(UserError, match=r"^augment.erasing=1.5 is invalid: use a probability in \[0, 1\]"):
        config.check(make_config(["augment=xray", "augment.erasing=1.5"]))


@pytest.mark.parametrize("overrides", [["augment=xray"], ["augment=xray", "augment.erasing=0.5"]])
def test_a_pass_stopped_early_does_not_change_later_augmentation(overrides: list[str]):
    """A discarded iterator (a prefetch running ahead, a sample taken for a figure) must not shift
    the random draws of the passes after it, or a seed would not reproduce its run."""
    cfg = make_config(overrides).augment

    def second_pass(batches_taken_first: int) -> np.ndarray:
        ds = augment.apply(batches(24), cfg, 0)
        for _ in zip(range(batches_taken_first), ds, strict=False):
            pass
        return np.concatenate([x.numpy() for x, _ in ds])

    assert np.array_equal(second_pass(1), second_pass(5))
