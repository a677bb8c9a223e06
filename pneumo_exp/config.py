"""The config: its checks (well under a second, before TensorFlow is imported) and what makes two
configs the same run (a hash of every key that changes results)."""

import hashlib
import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pneumo_exp import UserError, file_in_the_way

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("data", "model", "regularization", "imbalance", "augment", "train", "eval", "tracking", "launcher")
# Smallest input each network accepts (each halves the image four or five times).
MIN_IMAGE_SIZE = {"seed_cnn": 32, "resnet_small": 32, "keras_app": 32}
# Largest square side: 5,000 images at 1024 px are 5 GB decoded, held in memory.
MAX_IMAGE_SIZE = 1024
# Keras's dtype policies a run may train under (train.precision).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# eval.adapt's choices and the adapted scorings each one logs (adaptation.py; `both` logs prior and
# bn too, `all` every method).
ADAPT_METHODS = {"none": (), "prior": ("prior",), "bn": ("bn",), "both": ("prior", "bn", "both"),
                 "tent": ("tent",), "all": ("prior", "bn", "both", "tent")}
# train.threshold's named rules (measure.choose_threshold); a number is used as it is.
THRESHOLD_RULES = ("youden", "sensitivity", "calibrated", "balanced")
# The keras.applications backbones that take raw 0..255 pixels (they rescale inside the model).
RAW_PIXEL_BACKBONES = (*(f"EfficientNetB{i}" for i in range(8)),
                       *(f"EfficientNetV2{v}" for v in ("B0", "B1", "B2", "B3", "S", "M", "L")),
                       *(f"ConvNeXt{v}" for v in ("Tiny", "Small", "Base", "Large", "XLarge")),
                       "MobileNetV3Small", "MobileNetV3Large")


# Config keys that say where a run is logged, how it is executed, whether it continues and where
# decoded images are kept: they change nothing it computes, so they are left out of config_hash,
# of a sweep's identity and of a report's cell names.
HOW_IT_RUNS = ("tracking", "launcher", "train.resume", "train.intra_op_threads",
               "train.inter_op_threads", "data.cache_dir")


def changes_results(key: str) -> bool:
    """False for a dotted config key (`launcher.jobs`, `tracking`) under HOW_IT_RUNS."""
    return not any(key == k or key.startswith(f"{k}.") for k in HOW_IT_RUNS)


def config_hash(cfg: DictConfig, *leave_out: str) -> str:
    """Stable hash of the resolved config without HOW_IT_RUNS and the top-level keys in leave_out:
    equal for two configs that compute the same run."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in (*HOW_IT_RUNS, *leave_out):
        *parents, last = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def choice_keys(group: str, name: str) -> set[str]:
    """The keys conf/GROUP/NAME.yaml defines, with those of the choices it extends through its
    defaults list (e.g. augment/xray_strong.yaml extends xray.yaml)."""
    node = OmegaConf.load(CONF / group / f"{name}.yaml")
    bases = [base for base in node.get("defaults", []) if isinstance(base, str) and base != "_self_"]
    if group == "launcher":  # a launcher file is global (it also sets hydra.*): its keys sit below
        node = node.launcher
    return set(node).difference({"defaults"}).union(*(choice_keys(group, base) for base in bases))


def check_keys(cfg: DictConfig) -> None:
    """Reject keys that no YAML in conf/ defines (a typo like +train.epoch=5 would do nothing)."""
    unknown = sorted(set(cfg) - {*GROUPS, "seed"})
    for group in GROUPS:
        known = choice_keys(group, cfg[group].name)
        unknown += [f"{group}.{key}" for key in sorted(set(cfg[group]) - known)]
    if unknown:
        raise UserError(unknown_key(unknown[0]))


def one_of(options: list[str] | tuple[str, ...]) -> str:
    """`use a, b or c`: the fix of a value that is none of `options`."""
    return f"use {', '.join(options[:-1])} or {options[-1]}" if len(options) > 1 else f"use {options[0]}"


def unknown_key(key: str) -> str:
    """The one line for a key no YAML in conf/ defines (a typo, or a key a newer version renamed)."""
    return f"unknown config key {key}: check its spelling against conf/ (`python -m pneumo_exp --cfg job` " \
        "prints every key)"


def _require(ok: bool, key: str, value: object, fix: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is invalid: {fix}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool: True would pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_seed(value: object) -> bool:
    """What NumPy's and TensorFlow's seeding accept alike."""
    return _is_int(value) and 0 <= value < 2**32


def _is_folder(value: object) -> bool:
    """A path that is, or can become, a folder: no file in its place or above it."""
    if not isinstance(value, str) or not value:
        return False
    return file_in_the_way(Path(value).expanduser()) is None


def check(cfg: DictConfig) -> None:
    """Raise UserError naming the first unknown key or impossible setting and how to fix it."""
    check_keys(cfg)
    check_data(cfg.data, cfg.model.name)
    check_run(cfg)  # first: the thread counts of check_train are resolved from launcher.jobs
    check_train(cfg.train, cfg.data.image_size)
    check_model(cfg)
    check_augment(cfg.augment)
    check_imbalance(cfg.imbalance)
    check_eval(cfg.eval, cfg.data)


def check_data(data: DictConfig, model_name: str) -> None:
    """Image size and channels; a folder source's root and split fractions."""
    min_size = MIN_IMAGE_SIZE[model_name]
    size = data.image_size
    _require(_is_int(size) and min_size <= size <= MAX_IMAGE_SIZE, "data.image_size", size,
             f"{model_name} needs an integer from {min_size} to {MAX_IMAGE_SIZE}")
    _require(_is_int(data.channels) and data.channels in (1, 3), "data.channels", data.channels,
             "use 1 or 3")
    if data.name == "pneumoniamnist":
        _require(data.path is None or isinstance(data.path, str), "data.path", data.path,
                 "pass the path of pneumoniamnist.npz, or null to download it")
        _require(isinstance(data.md5, str), "data.md5", data.md5, "use the file's md5 as 32 hex digits")
    if data.name == "chest_xray":
        _require(isinstance(data.root, str) and bool(data.root), "data.root", data.root,
                 "pass data.root=DIR, the folder holding train/{NORMAL,PNEUMONIA}")
        for key in ("val_fraction", "test_fraction"):
            value = data[key]
            _require(_is_number(value) and 0 < value < 1, f"data.{key}", value,
                     "use a fraction strictly between 0 and 1")
        _require(_is_seed(data.split_seed), "data.split_seed", data.split_seed,
                 "use an integer from 0 to 2**32 - 1")
        _require(data.extra_eval is None or isinstance(data.extra_eval, DictConfig), "data.extra_eval",
                 data.extra_eval,
                 "use {NAME: DIR, ...}, e.g. data.extra_eval={site_b:/data/site_b}")
        _require(data.val_fraction + data.test_fraction < 1, "data.val_fraction",
                 data.val_fraction, "val_fraction + test_fraction must stay below 1")


def check_train(train: DictConfig, size: int) -> None:
    """The fit (epochs, batches, optimizer, early stopping), the operating point, TTA and threads."""
    _require(_is_int(train.epochs) and train.epochs >= 1, "train.epochs", train.epochs,
             "use an integer >= 1")
    _require(_is_int(train.batch_size) and train.batch_size >= 1, "train.batch_size",
             train.batch_size, "use an integer >= 1")
    _require(_is_number(train.learning_rate) and train.learning_rate > 0, "train.learning_rate",
             train.learning_rate, "use a positive, finite number")
    _require(_is_int(train.members) and train.members >= 1, "train.members", train.members,
             "use an integer >= 1 (the number of networks averaged; 1 = no ensemble)")
    patience = train.early_stopping_patience
    _require(_is_int(patience) and patience >= 0, "train.early_stopping_patience", patience,
             "use an integer >= 0 (0 turns early stopping off)")
    _require(train.precision in PRECISIONS, "train.precision", train.precision, one_of(PRECISIONS))
    for key in ("resume", "jit_compile"):
        _require(isinstance(train[key], bool), f"train.{key}", train[key], "use true or false")
    for key in ("intra_op_threads", "inter_op_threads"):
        _require(_is_int(train[key]) and train[key] >= 0, f"train.{key}", train[key],
                 "use an integer >= 0 (0 = TensorFlow's default)")
    _require(train.lr_schedule in ("constant", "cosine"), "train.lr_schedule", train.lr_schedule,
             "use constant or cosine")
    threshold = train.threshold
    _require(threshold in THRESHOLD_RULES or (_is_number(threshold) and 0 < threshold < 1),
             "train.threshold", threshold, f"{one_of(THRESHOLD_RULES)}, or a number between 0 and 1")
    _require(_is_number(train.target_sensitivity) and 0 < train.target_sensitivity <= 1,
             "train.target_sensitivity", train.target_sensitivity, "use a number in (0, 1]")
    _require(_is_number(train.weight_decay) and 0 <= train.weight_decay * train.learning_rate < 1,
             "train.weight_decay", train.weight_decay,
             "use a number >= 0 (e.g. 0.05; 0 = none) whose product with train.learning_rate stays below 1")
    _require(_is_number(train.ema_momentum) and 0 <= train.ema_momentum < 1, "train.ema_momentum",
             train.ema_momentum, "use a number in [0, 1), e.g. 0.99 (0 = no weight averaging)")
    _require(_is_number(train.tta_shift) and 0 <= train.tta_shift < 0.5, "train.tta_shift", train.tta_shift,
             "use a fraction in [0, 0.5) of the image side (0 = no test-time augmentation)")
    _require(not train.tta_shift or round(train.tta_shift * size) >= 1, "train.tta_shift", train.tta_shift,
             f"it shifts a {size} px image by 0 pixels: use more than {0.5 / size:.4g}, or 0 for none")


def check_run(cfg: DictConfig) -> None:
    """The seed, the parallel jobs, the regularization switches and tracking's keys."""
    _require(_is_seed(cfg.seed), "seed", cfg.seed, "use an integer from 0 to 2**32 - 1")
    _require(_is_int(cfg.launcher.jobs) and cfg.launcher.jobs >= 1, "launcher.jobs", cfg.launcher.jobs,
             "use an integer >= 1")
    scale = cfg.regularization.dropout_scale
    _require(_is_number(scale) and 0 <= scale < 1 / 0.7, "regularization.dropout_scale", scale,
             "use a number in [0, 1.42): the largest Dropout rate, 0.7, times it must stay below 1")
    for key in ("batch_norm", "dropout"):
        _require(isinstance(cfg.regularization[key], bool), f"regularization.{key}",
                 cfg.regularization[key], "use true or false")
    check_tracking(cfg.tracking)


def check_tracking(tracking: DictConfig) -> None:
    """The switches, the experiment's name and the local folders (the store URI itself is checked as
    it opens, before the run does: store.store_uri)."""
    for key in ("rerun", "log_figures", "log_model"):
        value = tracking[key]
        _require(isinstance(value, bool), f"tracking.{key}", value, "use true or false")
    _require(isinstance(tracking.uri, str) and bool(tracking.uri), "tracking.uri", tracking.uri,
             "use sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")
    _require(isinstance(tracking.experiment, str) and bool(tracking.experiment.strip()),
             "tracking.experiment", tracking.experiment, "use a non-empty name, e.g. pneumo_exp")
    _require(_is_folder(tracking.backup_dir), "tracking.backup_dir", tracking.backup_dir,
             "use a folder path (not a file, nor under one), e.g. mlruns/backups")
    location = tracking.artifact_location
    _require(location is None or _is_folder(location), "tracking.artifact_location", location,
             "use a folder path (not a file, nor under one), or null for MLflow's default")


def check_imbalance(imbalance: DictConfig) -> None:
    """Focal loss's alpha and gamma (the other methods have no keys)."""
    if imbalance.name == "focal":
        _require(_is_number(imbalance.gamma) and imbalance.gamma >= 0, "imbalance.gamma",
                 imbalance.gamma, "use a number >= 0")
        _require(_is_number(imbalance.alpha) and 0 <= imbalance.alpha <= 1, "imbalance.alpha",
                 imbalance.alpha, "use a number between 0 and 1")


def check_eval(eval_cfg: DictConfig, data: DictConfig) -> None:
    """The adaptation method, its check, the shift warning's margins and the labelled samples."""
    _require(eval_cfg.adapt in ADAPT_METHODS, "eval.adapt", eval_cfg.adapt, one_of(list(ADAPT_METHODS)))
    for key in ("shift_prevalence_margin", "shift_probability_margin", "alpha"):
        _require(_is_number(eval_cfg[key]) and 0 < eval_cfg[key] < 1, f"eval.{key}", eval_cfg[key],
                 "use a number between 0 and 1, e.g. 0.1")
    _require(_is_int(eval_cfg.min_images) and eval_cfg.min_images >= 2, "eval.min_images",
             eval_cfg.min_images, "use an integer >= 2")
    _require(isinstance(eval_cfg.labelled_bn, bool), "eval.labelled_bn", eval_cfg.labelled_bn,
             "use true or false")
    labelled = eval_cfg.labelled
    _require(labelled is None or isinstance(labelled, DictConfig), "eval.labelled", labelled,
             "use {SET: N or DIR, ...}, e.g. eval.labelled={site_b:50}")
    sets = ["test", *(data.get("extra_eval") or {})]
    for name, sample in (labelled or {}).items():
        _require(name in sets, f"eval.labelled.{name}", sample,
                 f"name a scored set ({', '.join(sets)}; add a site with data.extra_eval={{{name}:DIR}})")
        _require((_is_int(sample) and sample >= 2) or (isinstance(sample, str) and Path(sample).expanduser()
                                                        .is_dir()), f"eval.labelled.{name}", sample,
                 "use a number of images >= 2 to draw from the set, or a folder of labelled NORMAL/ and "
                 "PNEUMONIA/ images")


def check_model(cfg: DictConfig) -> None:
    """The network's own keys, and how they combine with regularization and data."""
    model, regularization = cfg.model, cfg.regularization
    if model.name != "keras_app":
        _require(model.input_norm in ("rescale", "standardize"), "model.input_norm", model.input_norm,
                 "use rescale (pixels / 255) or standardize (each image to mean 0, variance 1)")
    if model.name != "seed_cnn":
        scale = regularization.dropout_scale if regularization.dropout else 0
        _require(_is_number(model.head_dropout) and model.head_dropout >= 0
                 and model.head_dropout * scale < 1, "model.head_dropout", model.head_dropout,
                 f"use a number >= 0 that times regularization.dropout_scale={scale} stays below 1")
    if model.name == "resnet_small":
        _require(len(model.widths) > 0 and all(_is_int(w) and w > 0 for w in model.widths),
                 "model.widths", list(model.widths), "use a list of positive integers, e.g. [32, 64, 128]")
    if model.name == "keras_app":
        _require(model.backbone in RAW_PIXEL_BACKBONES, "model.backbone", model.backbone,
                 "use a keras.applications net that takes 0..255 pixels: EfficientNetB0-B7, "
                 "EfficientNetV2B0-B3/S/M/L, ConvNeXtTiny/Small/Base/Large/XLarge, MobileNetV3Small/Large")
        _require(model.weights in (None, "imagenet"), "model.weights", model.weights,
                 "use null (from scratch) or imagenet")
        _require(model.weights is None or cfg.data.channels == 3, "data.channels", cfg.data.channels,
                 "ImageNet weights need data.channels=3")
        _require(regularization.batch_norm, "regularization", regularization.name,
                 "keras_app backbones keep their own BatchNorm: use regularization=bn_dropout or bn_only")


def check_augment(augment: DictConfig) -> None:
    """Each augmentation strength in its range (augment=none has none)."""
    if augment.name == "none":
        return
    for key, top in (("rotation_degrees", 180), ("shift", 1), ("zoom", 1), ("contrast", 1),
                     ("brightness", 1)):
        _require(_is_number(augment[key]) and 0 <= augment[key] < top, f"augment.{key}", augment[key],
                 f"use a number in [0, {top}) (0 leaves it out)")
    _require(isinstance(augment.horizontal_flip, bool), "augment.horizontal_flip",
             augment.horizontal_flip, "use true or false")
    _require(_is_number(augment.mixup) and 0 <= augment.mixup <= 1, "augment.mixup", augment.mixup,
             "use a MixUp alpha in [0, 1], e.g. 0.2 (0 = off)")
    _require(_is_number(augment.erasing) and 0 <= augment.erasing <= 1, "augment.erasing", augment.erasing,
             "use a probability in [0, 1], e.g. 0.5 (0 = off)")
