"""PneumoniaMNIST: the official MedMNIST npz (a local data.path, or downloaded once) and its splits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from pneumo_exp import UserError
from pneumo_exp.data.dataset import SPLITS, Data, Split, found_in_two_splits
from pneumo_exp.data.decode import resize


def check_path(cfg: DictConfig) -> None:
    """Fail fast on a data.path that is no file (no data.path: the file is downloaded)."""
    if cfg.path and not Path(cfg.path).expanduser().is_file():
        raise UserError(f"data.path={cfg.path} does not exist: pass the path of pneumoniamnist.npz")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _download(url: str, md5: str) -> Path:
    """The file from Keras' cache ($KERAS_HOME/datasets, default ~/.keras), fetched once."""
    import keras  # only here: a local data.path needs no TensorFlow

    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    try:
        return Path(keras.utils.get_file("pneumoniamnist.npz", url, file_hash=md5,
                                         hash_algorithm="md5", cache_dir=str(keras_home)))
    except Exception as error:  # get_file raises bare Exception on network failures
        cache = keras_home / "datasets" / "pneumoniamnist.npz"
        raise UserError(
            f"cannot download PneumoniaMNIST from {url} ({error}); get pneumoniamnist.npz "
            f"(md5 {md5}) and pass data.path=FILE, or copy it to {cache}"
        ) from error


def pneumoniamnist(cfg: DictConfig) -> Data:
    """The official MedMNIST npz and its own splits. No patient ids are published, and MedMNIST drew
    val from Kermany's training images by image, so a patient's images can be in train and val."""
    check_path(cfg)
    path = Path(cfg.path).expanduser() if cfg.path else _download(cfg.url, cfg.md5)
    md5 = _md5(path)
    if md5 != cfg.md5:
        raise UserError(
            f"{path} has md5 {md5}, not the official {cfg.md5}: re-download it from {cfg.url} "
            "(or set data.md5 for another MedMNIST file)"
        )
    splits, contents = {}, {}
    with np.load(path) as npz:
        for name in SPLITS:
            keys = (f"{name}_images", f"{name}_labels")
            missing = [key for key in keys if key not in npz.files]
            if missing:
                raise UserError(f"{path} lacks {missing}: use an official MedMNIST npz file")
            images, labels = npz[keys[0]], npz[keys[1]].reshape(-1)
            if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
                raise UserError(f"{path}: {keys[0]} has shape {images.shape} {images.dtype} for "
                                f"{len(labels)} labels, expected (n, height, width) uint8 grayscale: "
                                "use an official MedMNIST 2D npz file")
            if not np.isin(labels, (0, 1)).all():
                raise UserError(f"{path}: {keys[1]} holds values other than 0 and 1: "
                                "use the binary PneumoniaMNIST file")
            resized = np.stack([resize(Image.fromarray(im), cfg.image_size) for im in images])
            labels = labels.astype(np.int32)
            splits[name] = Split(resized[..., None], labels, np.full(len(labels), ""))
            contents[name] = [(f"{keys[0]}[{i}]", hashlib.md5(im.tobytes()).hexdigest())
                              for i, im in enumerate(images)]
    return Data(**splits, fingerprint=f"md5:{md5}", test_source="official",
                duplicates=found_in_two_splits(contents), source_size=images.shape[1])
