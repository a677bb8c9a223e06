"""Data: find the images, split them by patient, decode them once, feed them to Keras.

Everything up to `pipeline` is plain numpy/Pillow, so bad data fails before TensorFlow loads.
Images are kept as one grayscale uint8 array per split (the X-rays are grayscale); conversion to
float and to 3 channels happens per batch, in the graph.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from pneumo_exp import UserError

if TYPE_CHECKING:
    import tensorflow as tf

CLASSES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SPLITS = ("train", "val", "test")
# person123_bacteria_456.jpeg -> person123; IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg -> IM-0115, IM-1427
PATIENT_PATTERNS = (re.compile(r"(person\d+)_"), re.compile(r"(IM-\d+)-"))


@dataclass
class Split:
    images: np.ndarray  # (n, size, size, 1) uint8
    labels: np.ndarray  # (n,) int32, 1 = pneumonia
    patients: np.ndarray  # (n,) patient id of each image ("" where the source has none)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    fingerprint: str  # changes whenever the files (or the npz) change
    test_source: str  # "official", or "held_out_from_train" when the source has no test split

    def counts(self) -> dict[str, int]:
        """Images per split and class, e.g. n_train_normal."""
        return {
            f"n_{name}_{cls.lower()}": int(np.sum(getattr(self, name).labels == label))
            for name in SPLITS
            for label, cls in enumerate(CLASSES)
        }

    def shared_patients(self) -> dict[str, int]:
        """Patients found in two splits at once: 0 everywhere, or the split leaks."""
        ids = {name: set(getattr(self, name).patients) - {""} for name in SPLITS}
        return {
            f"patients_shared_{a}_{b}": len(ids[a] & ids[b])
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
        }


def load(cfg: DictConfig) -> Data:
    """Read the source named by `data=` into decoded, split arrays."""
    sources = {"pneumoniamnist": pneumoniamnist, "chest_xray": chest_xray}
    return sources[cfg.name](cfg)


def resize(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale, square `size` x `size` uint8 array (bilinear, as the notebook's tf.image.resize)."""
    return np.asarray(image.convert("L").resize((size, size), Image.BILINEAR))


# --- PneumoniaMNIST -----------------------------------------------------------------------------

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
    """The official MedMNIST npz, its own train/val/test split (no patient ids are published)."""
    path = Path(cfg.path).expanduser() if cfg.path else _download(cfg.url, cfg.md5)
    if not path.is_file():
        raise UserError(f"data.path={cfg.path} does not exist: pass the path of pneumoniamnist.npz")
    md5 = _md5(path)
    if md5 != cfg.md5:
        raise UserError(
            f"{path} has md5 {md5}, not the official {cfg.md5}: re-download it from {cfg.url} "
            "(or set data.md5 for another MedMNIST file)"
        )
    splits = {}
    with np.load(path) as npz:
        for name in SPLITS:
            keys = (f"{name}_images", f"{name}_labels")
            missing = [key for key in keys if key not in npz.files]
            if missing:
                raise UserError(f"{path} lacks {missing}: use an official MedMNIST npz file")
            images = npz[keys[0]]
            resized = np.stack([resize(Image.fromarray(im), cfg.image_size) for im in images])
            labels = npz[keys[1]].reshape(-1).astype(np.int32)
            splits[name] = Split(resized[..., None], labels, np.full(len(labels), ""))
    return Data(**splits, fingerprint=f"md5:{md5}", test_source="official")


# --- Kaggle chest_xray folder -------------------------------------------------------------------

def find_root(root: Path) -> Path:
    """The folder holding train/: `root` itself or its chest_xray/ child (the Kaggle zip layout)."""
    for candidate in (root, root / "chest_xray"):
        if (candidate / "train").is_dir():
            return candidate
    if not root.exists():
        raise UserError(f"data.root={root} does not exist: pass the folder that holds train/")
    raise UserError(f"no train/ folder in data.root={root}: pass the folder that holds "
                    "train/{NORMAL,PNEUMONIA}")


def scan(folder: Path) -> tuple[list[Path], list[int]]:
    """Image files under folder/{NORMAL,PNEUMONIA} and their labels (from the class folder)."""
    files, labels = [], []
    for label, cls in enumerate(CLASSES):
        class_dir = folder / cls
        found = sorted(
            p for p in class_dir.glob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ) if class_dir.is_dir() else []
        if not found:
            raise UserError(f"no images in {class_dir}: each split needs NORMAL/ and PNEUMONIA/ "
                            "folders with .jpeg/.jpg/.png files")
        files += found
        labels += [label] * len(found)
    return files, labels


def patient_id(path: Path) -> str:
    """The patient a Kermany file name belongs to; the file itself where the name carries none."""
    for pattern in PATIENT_PATTERNS:
        match = pattern.search(path.name)
        if match:
            return match.group(1)
    return path.stem


def split_by_patient(patients: np.ndarray, labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `fraction` of the patients, stratified by class, held out whole."""
    unique, first = np.unique(patients, return_index=True)
    group_labels = labels[first]  # a Kermany patient's images all share one class
    if min(np.sum(group_labels == 0), np.sum(group_labels == 1)) < 2:
        raise UserError("fewer than 2 patients in a class: a patient-disjoint split needs more "
                        "NORMAL and PNEUMONIA patients in data.root")
    _, held = train_test_split(unique, test_size=fraction, stratify=group_labels,
                               random_state=seed)
    is_held = np.isin(patients, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def _read(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.draft("L", (size, size))  # JPEG: decode at a reduced scale when it is large
            return resize(image, size)
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"cannot decode {path} ({error}): replace or delete the file") from error


def decode(files: list[Path], size: int) -> np.ndarray:
    """Decode and resize every file once, on all cores (Pillow releases the GIL)."""
    with ThreadPoolExecutor() as pool:
        images = list(pool.map(lambda p: _read(p, size), files))
    return np.stack(images)[..., None]


def fingerprint(root: Path, files: list[Path]) -> str:
    """Hash of the file list and sizes: cheap, and changes when any image is added or replaced."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(root)}\t{path.stat().st_size}\n".encode())
    return f"files:{digest.hexdigest()[:16]}"


def chest_xray(cfg: DictConfig) -> Data:
    """train/ and val/ pooled and re-split by patient; test/ kept, or held out by patient if absent."""
    root = find_root(Path(cfg.root).expanduser())
    files, labels = scan(root / "train")
    if (root / "val").is_dir():  # the official val/ holds only 16 images: pool it with train
        val_files, val_labels = scan(root / "val")
        files, labels = files + val_files, labels + val_labels
    all_files = list(files)
    pool_files, pool_labels = np.array(files, dtype=object), np.array(labels, dtype=np.int32)
    pool_patients = np.array([patient_id(p) for p in files])
    if (root / "test").is_dir():
        test_files, test_labels = scan(root / "test")
        all_files += test_files
        test_source = "official"
    else:
        keep, held = split_by_patient(pool_patients, pool_labels, cfg.test_fraction, cfg.split_seed)
        test_files, test_labels = pool_files[held], pool_labels[held]
        pool_files, pool_labels, pool_patients = pool_files[keep], pool_labels[keep], pool_patients[keep]
        test_source = "held_out_from_train"
    train, val = split_by_patient(pool_patients, pool_labels, cfg.val_fraction, cfg.split_seed)

    def make(paths: list[Path], split_labels: list[int]) -> Split:
        return Split(decode(list(paths), cfg.image_size), np.asarray(split_labels, dtype=np.int32),
                     np.array([patient_id(p) for p in paths]))

    return Data(
        train=make(pool_files[train], pool_labels[train]),
        val=make(pool_files[val], pool_labels[val]),
        test=make(test_files, test_labels),
        fingerprint=fingerprint(root, all_files),
        test_source=test_source,
    )


# --- Input pipeline -----------------------------------------------------------------------------

def pipeline(split: Split, batch_size: int, channels: int, *, shuffle: bool = False,
             balanced: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255, float32 label); the model rescales.

    shuffle: a new order every epoch. balanced: an endless stream drawing NORMAL and PNEUMONIA
    images with equal probability (oversampling); fit it with steps_per_epoch.
    """
    import tensorflow as tf

    images = tf.constant(split.images)
    labels = tf.constant(split.labels, tf.float32)
    if balanced:
        by_class = [
            tf.data.Dataset.from_tensor_slices(np.flatnonzero(split.labels == label))
            .repeat().shuffle(int(np.sum(split.labels == label)), seed=seed + label)
            for label in (0, 1)
        ]
        indices = tf.data.Dataset.sample_from_datasets(by_class, weights=[0.5, 0.5], seed=seed)
    else:
        indices = tf.data.Dataset.range(len(split.labels))
        if shuffle:
            indices = indices.shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)

    def gather(batch):
        pixels = tf.cast(tf.gather(images, batch), tf.float32)
        if channels == 3:
            pixels = tf.image.grayscale_to_rgb(pixels)
        return pixels, tf.gather(labels, batch)

    return indices.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)
