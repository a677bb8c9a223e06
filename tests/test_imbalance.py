import numpy as np
import pytest
from omegaconf import OmegaConf

from pneumo_exp import config
from pneumo_exp.data import pipeline
from pneumo_exp.data.dataset import Split
from pneumo_exp.models import imbalance, train
from pneumo_exp.models.imbalance import plan
from pneumo_exp.run import run_experiment
from tests.helpers import PROJECT, QUIET, make_config, runs_in, store_overrides

LABELS = np.array([0] * 25 + [1] * 75)


def test_class_weight_equals_the_notebook_formula():
    weights = plan(make_config(["imbalance=class_weight"]).imbalance, LABELS).class_weight
    assert weights[0] == pytest.approx(100 / (2 * 25))
    assert weights[1] == pytest.approx(100 / (2 * 75))


def test_effective_number_weights_lie_between_none_and_class_weight_as_beta_grows():
    def weights(beta: float) -> dict[int, float]:
        return plan(make_config(["imbalance=effective_number", f"imbalance.beta={beta}"]).imbalance,
                    LABELS).class_weight

    assert weights(0) == {0: 1.0, 1: 1.0}
    counts = np.array([25, 75])
    expected = (1 - 0.99) / (1 - 0.99 ** counts)  # Cui et al. 2019, eq. 3, scaled to sum to 2
    assert list(weights(0.99).values()) == pytest.approx(list(2 * expected / expected.sum()))
    ratios = [weights(beta)[0] / weights(beta)[1] for beta in (0.9, 0.99, 0.999999)]
    assert 1 < ratios[0] < ratios[1] < ratios[2] < 3 and ratios[2] == pytest.approx(3, rel=1e-3)


def test_focal_loss_equals_an_independent_reference():
    cfg = make_config(["imbalance=focal", "imbalance.alpha=0.3", "imbalance.gamma=1.5"])
    y = np.array([1, 1, 0, 0, 1], dtype="float32")
    p = np.array([0.9, 0.2, 0.1, 0.7, 0.5], dtype="float32")
    p_true = np.where(y == 1, p, 1 - p)
    alpha_true = np.where(y == 1, 0.3, 0.7)
    reference = np.mean(-alpha_true * (1 - p_true) ** 1.5 * np.log(p_true))
    loss = plan(cfg.imbalance, LABELS).loss(y[:, None], p[:, None])
    assert float(loss) == pytest.approx(reference, rel=1e-4)
    cross_entropy = plan(make_config([]).imbalance, LABELS).loss(y[:, None], p[:, None])
    assert float(cross_entropy) > 2 * float(loss)  # focal down-weights: it is a different loss


def test_oversample_rebalances_batches_and_none_changes_nothing():
    assert plan(make_config(["imbalance=oversample"]).imbalance, LABELS).sampling == "over"
    plain = plan(make_config([]).imbalance, LABELS)
    assert plain.class_weight is None and plain.sampling == "none"


# 30 pneumonia (majority), 10 normal; each image's pixels hold its index, so batches name their images.
UNDER_LABELS = np.array([1] * 15 + [0] * 10 + [1] * 15, np.int32)
UNDER_SPLIT = Split(np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8),
                    UNDER_LABELS, np.full(40, ""))


def undersampled_epochs(seed: int, epochs: int = 3) -> list[np.ndarray]:
    """The image indices of the first `epochs` epochs of undersampled batches (3 batches of 8, 8, 4)."""
    steps = imbalance.steps_per_epoch(imbalance.Plan(None, sampling="under"), UNDER_LABELS, 8)
    assert steps == 3  # ceil(2 * 10 / 8), not ceil(40 / 8)
    ds = pipeline.batches(UNDER_SPLIT, 8, 1, shuffle=True, sampling="under", seed=seed)
    images = [x.numpy()[:, 0, 0, 0].astype(int) for x, _ in ds.take(steps * epochs)]
    assert [len(batch) for batch in images] == [8, 8, 4] * epochs  # batches never straddle epochs
    return [np.concatenate(images[k * steps:(k + 1) * steps]) for k in range(epochs)]


def test_undersampled_epochs_keep_every_minority_image_and_as_many_majority_images():
    minority, majority = set(np.flatnonzero(UNDER_LABELS == 0)), set(np.flatnonzero(UNDER_LABELS == 1))
    epochs = undersampled_epochs(0)
    for epoch in epochs:
        assert len(epoch) == 20 and len(set(epoch)) == 20  # no image twice within an epoch
        assert set(epoch) & minority == minority  # every minority image, once
        assert len(set(epoch) & majority) == 10
        assert list(epoch) != sorted(epoch)  # shuffled, not minority-then-majority
    subsets = [frozenset(epoch) & majority for epoch in epochs]
    assert subsets[0] != subsets[1] != subsets[2]  # a fresh majority subset each epoch


def test_undersampling_repeats_for_a_seed_and_differs_across_seeds():
    first = undersampled_epochs(0)
    assert all(np.array_equal(a, b) for a, b in zip(first, undersampled_epochs(0), strict=True))
    other = undersampled_epochs(1)
    assert all(set(a) != set(b) for a, b in zip(first, other, strict=True))
    assert not np.array_equal(first[1], undersampled_epochs(0)[0])  # seed 0's epoch 1 is no other's epoch 0


def test_undersampling_needs_both_classes():
    only_pneumonia = Split(UNDER_SPLIT.images, np.ones(40, np.int32), UNDER_SPLIT.patients)
    with pytest.raises(ValueError, match="both classes"):
        pipeline.batches(only_pneumonia, 8, 1, sampling="under")


def test_undersample_is_a_valid_config_and_the_imbalance_sweeps_take_every_choice_in_conf():
    cfg = make_config(["imbalance=undersample"])
    config.check(cfg)
    assert plan(cfg.imbalance, LABELS).sampling == "under"
    for preset in ("imbalance", "ablation"):
        swept = OmegaConf.load(PROJECT / "sweeps" / f"{preset}.yaml").hydra.sweeper.params.imbalance
        assert swept == "glob(*)"  # Hydra expands it to conf/imbalance/'s choices, a new one included


def test_an_undersampled_run_trains_epochs_of_twice_the_minority(npz_overrides, tmp_path, monkeypatch):
    """The tiny split (10 normal, 30 pneumonia) at batch 8: fit gets 3 steps an epoch, not 5."""
    steps, real_fit = [], train.fit
    monkeypatch.setattr(train, "fit", lambda *args: steps.append(args[5]) or real_fit(*args))
    overrides = [*npz_overrides, *QUIET, "train.epochs=2", "imbalance=undersample",
                 *store_overrides(tmp_path)]
    cfg = make_config(overrides)
    run_experiment(cfg, overrides)
    assert steps == [3]
    run = runs_in(cfg.tracking.uri, cfg.tracking.experiment)[0]
    assert run.info.status == "FINISHED" and run.data.params["imbalance.name"] == "undersample"
