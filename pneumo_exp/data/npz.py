"""PneumoniaMNIST: the official MedMNIST npz (a local data.path, or downloaded once) and its splits."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.npyio import NpzFile
from omegaconf import DictConfig
from PIL import Image

from pneumo_exp import UserError, rule
from pneumo_exp.data.dataset import CLASSES, SPLITS, Data, Images, Split, found_in_two_splits
from pneumo_exp.data.decode import resize
from pneumo_exp.data.splits import fold_split

OFFICIAL = "use an official MedMNIST npz file"
# What np.load raises (tried on numpy 2.4) on bytes that are no npz: an empty file (EOFError), a zip
# cut short (BadZipFile), other bytes such as a pickle or HTML (ValueError); and what reading one array
# raises on a damaged member (BadZipFile: bad CRC; zlib.error: bad compressed data).
NOT_AN_NPZ = (EOFError, ValueError, zipfile.BadZipFile)
DAMAGED = (zipfile.BadZipFile, zlib.error)


@dataclass
class PneumoniaMNIST(Images):
    """data=pneumoniamnist: the official MedMNIST file (conf/data/pneumoniamnist.yaml says each key)."""
    path: str | None = rule(None, "pass the path of pneumoniamnist.npz, or null to download it")
    url: str = rule(None, "use the URL of the official file")
    md5: str = rule(None, "use the file's md5 as 32 hex digits")


def check_path(cfg: DictConfig) -> None:
    """Fail fast, before the store opens, on a data.path that is not an intact PneumoniaMNIST npz
    (no data.path: the file is downloaded, and checked once it is here). Costs a read of the file,
    about 35 ms for the official 4 MB; no image is resized."""
    if cfg.path:
        _split_arrays(_local_file(cfg), cfg)


def _local_file(cfg: DictConfig) -> Path:
    """data.path, once it is known to be a file."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise UserError(f"data.path={cfg.path} does not exist: pass the path of pneumoniamnist.npz")
    return path


def _official_bytes(path: Path, cfg: DictConfig) -> bytes:
    """The file's bytes, once their md5 is data.md5 (the official file's, unless set for another)."""
    content = path.read_bytes()
    md5 = hashlib.md5(content).hexdigest()
    if md5 != cfg.md5:
        raise UserError(
            f"{path} has md5 {md5}, not the official {cfg.md5}: re-download it from {cfg.url} "
            "(or set data.md5 for another MedMNIST file)"
        )
    return content


def _open_npz(path: Path, content: bytes) -> NpzFile:
    """The npz in `content` (allow_pickle=False: pickled objects are refused, never run)."""
    try:
        npz = np.load(io.BytesIO(content))
    except NOT_AN_NPZ as error:
        why = "it is empty" if not content else (
            "a zip archive cut short or damaged" if content.startswith(b"PK") else "not a zip archive")
        raise UserError(f"{path} is not an npz file ({why}): {OFFICIAL}") from error
    if not isinstance(npz, NpzFile):
        raise UserError(f"{path} holds a single array (a .npy file), not an npz of the train, val and "
                        f"test arrays: {OFFICIAL}")
    return npz


def _array(path: Path, npz: NpzFile, key: str) -> np.ndarray:
    """One array of the npz; an object array or a damaged member is a UserError naming it."""
    try:
        return npz[key]
    except ValueError as error:  # an object array (needs allow_pickle), or a damaged .npy header
        raise UserError(f"{path}: {key} is not a plain array ({error}): {OFFICIAL}") from error
    except DAMAGED as error:
        raise UserError(f"{path}: {key} is damaged ({error}): {OFFICIAL}") from error


def _checked_split(path: Path, npz: NpzFile, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's images and labels, as PneumoniaMNIST has them: (n, height, width) uint8 images,
    n > 0, labels 0 and 1, both classes (AUC, and the threshold chosen on val, need both)."""
    keys = (f"{name}_images", f"{name}_labels")
    missing = [key for key in keys if key not in npz.files]
    if missing:
        raise UserError(f"{path} lacks {missing}: {OFFICIAL}")
    images, labels = _array(path, npz, keys[0]), _array(path, npz, keys[1]).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise UserError(f"{path}: {keys[0]} has shape {images.shape} {images.dtype} for "
                        f"{len(labels)} labels, expected (n, height, width) uint8 grayscale: "
                        "use an official MedMNIST 2D npz file")
    if not len(labels):
        raise UserError(f"{path}: the {name} split is empty ({keys[0]} holds 0 images): {OFFICIAL}")
    if not np.isin(labels, (0, 1)).all():
        raise UserError(f"{path}: {keys[1]} holds values other than 0 and 1: "
                        "use the binary PneumoniaMNIST file")
    if len(np.unique(labels)) < 2:
        raise UserError(f"{path}: the {name} split has {CLASSES[int(labels[0])]} images only: every split "
                        f"needs both classes (NORMAL and PNEUMONIA); {OFFICIAL}")
    return images, labels.astype(np.int32)


def _split_arrays(path: Path, cfg: DictConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split's checked (images, labels). The file is read once: the npz opens from the bytes
    its md5 was taken of."""
    with _open_npz(path, _official_bytes(path, cfg)) as npz:
        return {name: _checked_split(path, npz, name) for name in SPLITS}


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
    path = _local_file(cfg) if cfg.path else _download(cfg.url, cfg.md5)
    arrays = _split_arrays(path, cfg)
    names = {name: [f"{name}_images[{i}]" for i in range(len(labels))]
             for name, (_, labels) in arrays.items()}
    if cfg.folds:
        arrays, names = refolded(arrays, names, cfg)
    splits, contents = {}, {}
    for name, (images, labels) in arrays.items():
        resized = np.stack([resize(Image.fromarray(im), cfg.image_size) for im in images])
        splits[name] = Split(resized[..., None], labels, np.full(len(labels), ""),
                             names=np.array(names[name]))
        contents[name] = [(image, hashlib.md5(im.tobytes()).hexdigest())
                          for image, im in zip(names[name], images, strict=True)]
    return Data(**splits, fingerprint=f"md5:{cfg.md5}", test_source="official",
                duplicates=found_in_two_splits(contents), source_size=images.shape[1])


def refolded(arrays: dict[str, tuple[np.ndarray, np.ndarray]], names: dict[str, list[str]], cfg: DictConfig
             ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, list[str]]]:
    """train and val pooled and split again into fold data.fold of data.folds, image by image (no
    patient ids are published); the test split kept."""
    images = np.concatenate([arrays["train"][0], arrays["val"][0]])
    labels = np.concatenate([arrays["train"][1], arrays["val"][1]])
    pooled = names["train"] + names["val"]
    train, val = fold_split(np.arange(len(labels)), labels, cfg.folds, cfg.fold, cfg.split_seed)
    return ({"train": (images[train], labels[train]), "val": (images[val], labels[val]),
             "test": arrays["test"]},
            {"train": [pooled[i] for i in train], "val": [pooled[i] for i in val], "test": names["test"]})
