"""Config checks that run in well under a second, before TensorFlow is imported."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pneumo_exp import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("data", "model", "regularization", "imbalance", "train", "tracking")
# Smallest input each network accepts: seed_cnn halves the image five times.
MIN_IMAGE_SIZE = {"seed_cnn": 32}


def check_keys(cfg: DictConfig) -> None:
    """Reject keys that no YAML in conf/ defines (a typo like +train.epoch=5 would do nothing)."""
    unknown = sorted(set(cfg) - {*GROUPS, "seed"})
    for group in GROUPS:
        known = OmegaConf.load(CONF / group / f"{cfg[group].name}.yaml")
        unknown += [f"{group}.{key}" for key in sorted(set(cfg[group]) - set(known))]
    if unknown:
        raise UserError(f"unknown config key {unknown[0]}: check its spelling against conf/ "
                        "(`python -m pneumo_exp --cfg job` prints every key)")


def _require(ok: bool, key: str, value: object, fix: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is invalid: {fix}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(cfg: DictConfig) -> None:
    """Raise UserError naming the first unknown key or impossible setting and how to fix it."""
    check_keys(cfg)
    data, train, imbalance = cfg.data, cfg.train, cfg.imbalance
    min_size = MIN_IMAGE_SIZE[cfg.model.name]
    size = data.image_size
    _require(_is_int(size) and size >= min_size, "data.image_size", size,
             f"{cfg.model.name} needs an integer >= {min_size}")
    _require(data.channels in (1, 3), "data.channels", data.channels, "use 1 or 3")
    if data.name == "chest_xray":
        _require(data.root is not None, "data.root", data.root,
                 "pass data.root=DIR, the folder holding train/{NORMAL,PNEUMONIA}")
        for key in ("val_fraction", "test_fraction"):
            value = data[key]
            _require(_is_number(value) and 0 < value < 1, f"data.{key}", value,
                     "use a fraction strictly between 0 and 1")
        _require(_is_int(data.split_seed), "data.split_seed", data.split_seed, "use an integer")
        _require(data.val_fraction + data.test_fraction < 1, "data.val_fraction",
                 data.val_fraction, "val_fraction + test_fraction must stay below 1")
    _require(_is_int(train.epochs) and train.epochs >= 1, "train.epochs", train.epochs,
             "use an integer >= 1")
    _require(_is_int(train.batch_size) and train.batch_size >= 1, "train.batch_size",
             train.batch_size, "use an integer >= 1")
    _require(_is_number(train.learning_rate) and train.learning_rate > 0, "train.learning_rate",
             train.learning_rate, "use a positive number")
    patience = train.early_stopping_patience
    _require(_is_int(patience) and patience >= 0, "train.early_stopping_patience", patience,
             "use an integer >= 0 (0 turns early stopping off)")
    _require(_is_int(cfg.seed), "seed", cfg.seed, "use an integer")
    for key in ("resume", "mixed_precision", "jit_compile"):
        _require(isinstance(train[key], bool), f"train.{key}", train[key], "use true or false")
    _require(isinstance(cfg.tracking.rerun, bool), "tracking.rerun", cfg.tracking.rerun, "use true or false")
    for key in ("intra_op_threads", "inter_op_threads"):
        _require(_is_int(train[key]) and train[key] >= 0, f"train.{key}", train[key],
                 "use an integer >= 0 (0 = TensorFlow's default)")
    if imbalance.name == "focal":
        _require(_is_number(imbalance.gamma) and imbalance.gamma >= 0, "imbalance.gamma",
                 imbalance.gamma, "use a number >= 0")
        _require(_is_number(imbalance.alpha) and 0 <= imbalance.alpha <= 1, "imbalance.alpha",
                 imbalance.alpha, "use a number between 0 and 1")
