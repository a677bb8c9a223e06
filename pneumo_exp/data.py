"""Data: find the images, split them by patient, decode them once, feed them to Keras.

Everything up to `pipeline` is plain numpy/Pillow, so bad data fails before TensorFlow loads.
Images are kept as one grayscale uint8 array per split (the X-rays are grayscale); conversion to
float and to 3 channels happens per batch, in the graph.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from pneumo_exp import UserError, cache

if TYPE_CHECKING:
    import tensorflow as tf

CLASSES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SPLITS = ("train", "val", "test")
# person123_bacteria_456.jpeg -> person123; IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg -> IM-0115, IM-1427
PATIENT_PATTERNS = (re.compile(r"(person\d+)_"), re.compile(r"(IM-\d+)-"))
DECODER_VERSION = 1  # part of the cache key: bump when decoding or resizing changes


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
    skipped: list[str] = field(default_factory=list)  # "path: why" of each file left out
    duplicates: list[str] = field(default_factory=list)  # same image bytes in two splits
    cache: str = "off"  # decoded-image cache: "hit", "miss" (built now) or "off"
    source_size: int = 0  # side of the source's square images (an npz); 0: image files of any size

    def counts(self) -> dict[str, int]:
        """Images per split and class, e.g. n_train_normal."""
        return {
            f"n_{name}_{cls.lower()}": int(np.sum(getattr(self, name).labels == label))
            for name in SPLITS
            for label, cls in enumerate(CLASSES)
        }

    def shared_patients(self) -> dict[str, int]:
        """Patients found in two splits at once: 0 everywhere, or the split leaks. Empty unless
        every image's patient is known (PneumoniaMNIST publishes none; a file name may carry
        none), so that no 0 claims a check never made."""
        if any((getattr(self, name).patients == "").any() for name in SPLITS):
            return {}
        ids = {name: set(getattr(self, name).patients) for name in SPLITS}
        return {
            f"patients_shared_{a}_{b}": len(ids[a] & ids[b])
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
        }


def load(cfg: DictConfig) -> Data:
    """Read the source named by `data=` into decoded, split arrays."""
    sources = {"pneumoniamnist": pneumoniamnist, "chest_xray": chest_xray}
    return sources[cfg.name](cfg)


def check(cfg: DictConfig) -> None:
    """Fail fast on a missing source, before the store opens and anything decodes."""
    if cfg.name == "chest_xray":
        find_root(Path(cfg.root).expanduser())
    elif cfg.path and not Path(cfg.path).expanduser().is_file():
        raise UserError(f"data.path={cfg.path} does not exist: pass the path of pneumoniamnist.npz")


def found_in_two_splits(contents: dict[str, list[tuple[str, str]]]) -> list[str]:
    """"a = b" for each content found in two splits (its first image in each), from
    {split: [(image name, md5 of its pixels or bytes), ...]}."""
    owners: dict[str, dict[str, str]] = {}
    for split, images in contents.items():
        for name, digest in images:
            owners.setdefault(digest, {}).setdefault(split, name)
    return sorted(" = ".join(where.values()) for where in owners.values() if len(where) > 1)


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
    """The official MedMNIST npz and its own splits. No patient ids are published, and MedMNIST drew
    val from Kermany's training images by image, so a patient's images can be in train and val."""
    check(cfg)
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


# --- Kaggle chest_xray folder -------------------------------------------------------------------

def find_root(root: Path) -> Path:
    """The folder holding train/: `root`, or below it the chest_xray/ (and the zip's nested
    chest_xray/chest_xray/) that unzipping the Kaggle download gives."""
    for candidate in (root, root / "chest_xray", root / "chest_xray" / "chest_xray"):
        if (candidate / "train").is_dir():
            return candidate
    if not root.exists():
        raise UserError(f"data.root={root} does not exist: pass the folder that holds train/")
    raise UserError(f"no train/ folder in data.root={root}: pass the folder that holds "
                    "train/{NORMAL,PNEUMONIA}")


def scan(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under folder/{NORMAL,PNEUMONIA}, their labels (from the class folder), and
    "path: why" for every other file there (.DS_Store, macOS ._ files, text, ...)."""
    files, labels, ignored = [], [], []
    for label, cls in enumerate(CLASSES):
        class_dir = folder / cls
        found = []
        for path in sorted(class_dir.iterdir()) if class_dir.is_dir() else []:
            if path.name.startswith("."):
                ignored.append(f"{path}: hidden file")
            elif path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                ignored.append(f"{path}: not a .jpeg/.jpg/.png file")
            else:
                found.append(path)
        if not found:
            raise UserError(f"no images in {class_dir}: each split needs NORMAL/ and PNEUMONIA/ "
                            "folders with .jpeg/.jpg/.png files")
        files += found
        labels += [label] * len(found)
    return files, labels, ignored


def patient_id(path: Path) -> str:
    """The patient a Kermany file name belongs to, "" where the name carries none."""
    for pattern in PATIENT_PATTERNS:
        match = pattern.search(path.name)
        if match:
            return match.group(1)
    return ""


def patient_group(path: Path) -> str:
    """What a patient-disjoint split keeps together: the file's patient, or the file alone where
    its name carries no patient id."""
    return patient_id(path) or str(path)


def split_by_patient(patients: np.ndarray, labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `fraction` of the patients, stratified by class, held out whole."""
    from sklearn.model_selection import train_test_split  # 1 s to import: not before checks pass

    unique, first = np.unique(patients, return_index=True)
    group_labels = labels[first]  # a Kermany patient's images all share one class
    if min(np.sum(group_labels == 0), np.sum(group_labels == 1)) < 2:
        raise UserError("fewer than 2 patients in a class: a patient-disjoint split needs more "
                        "NORMAL and PNEUMONIA patients in data.root")
    held_out = math.ceil(fraction * len(unique))  # as train_test_split counts
    if min(held_out, len(unique) - held_out) < 2:
        raise UserError(f"a fraction of {fraction} of {len(unique)} patients leaves {held_out} held out "
                        f"and {len(unique) - held_out} kept, too few for both classes on each side: "
                        "change data.val_fraction / data.test_fraction or add patients to data.root")
    _, held = train_test_split(unique, test_size=fraction, stratify=group_labels,
                               random_state=seed)
    is_held = np.isin(patients, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def as_medmnist(image: Image.Image, size: int) -> Image.Image:
    """The image as MedMNIST made its npz files: the centre square, resized to `size` (bilinear).
    Checked on the 16 Kermany val images, which MedMNIST put in PneumoniaMNIST's train/val: each
    comes out within a mean of 2-5 grey levels of its npz image, the next closest 10 or more away
    (squashed instead of cropped: 23 on average)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.convert("L").crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def _read(path: Path, size: int, source_size: int = 0) -> tuple[np.ndarray | None, str, str]:
    """(pixels or None, md5 of the file's bytes, why it could not be used); with source_size,
    made `as_medmnist` at that size first, as a model trained on such an npz saw its images."""
    try:
        raw = path.read_bytes()
    except OSError as error:  # no permission, vanished, an I/O error
        return None, "", f"cannot read ({error.strerror})"
    digest = hashlib.md5(raw).hexdigest()
    if not raw:
        return None, digest, "empty file"
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if source_size:  # from the full image, as MedMNIST did
                return resize(as_medmnist(image, source_size), size), digest, ""
            image.draft("L", (size, size))  # JPEG: decode at a reduced scale when it is large
            return resize(image, size), digest, ""
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        return None, digest, f"cannot decode ({error})"


def decode(files: list[Path], size: int, source_size: int = 0
           ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Decode and resize every file once, on all cores (Pillow releases the GIL); with source_size,
    through an npz-sized image first (see `_read`).

    Returns the images that decoded, a mask of which files they are, the md5 of every file, and
    "path: why" for each file that did not decode (empty, truncated, corrupt, not an image).
    """
    with ThreadPoolExecutor() as pool:
        results = list(pool.map(lambda p: _read(p, size, source_size), files))
    keep = np.array([pixels is not None for pixels, _, _ in results], dtype=bool)
    images = [pixels for pixels, _, _ in results if pixels is not None]
    stacked = np.stack(images)[..., None] if images else np.zeros((0, size, size, 1), np.uint8)
    problems = [f"{path}: {why}" for path, (_, _, why) in zip(files, results, strict=True) if why]
    return stacked, keep, [digest for _, digest, _ in results], problems


def fingerprint(root: Path, files: list[Path], md5s: list[str]) -> str:
    """Hash of every file's path (below root) and content: changes when any image is added,
    removed, renamed or edited, and not when the folder moves."""
    digest = hashlib.sha256()
    for name, md5 in sorted(zip((str(p.relative_to(root)) for p in files), md5s, strict=True)):
        digest.update(f"{name}\t{md5}\n".encode())
    return f"files:{digest.hexdigest()[:16]}"


@dataclass
class FolderSplit:
    """A Kaggle-layout folder's image files split by patient, before anything is decoded."""
    root: Path
    files: dict[str, list[Path]]  # split name -> its files
    labels: dict[str, np.ndarray]  # split name -> their labels (int32, 1 = pneumonia)
    test_source: str
    skipped: list[str]  # "path: why" of each file that is no image


def split_files(cfg: DictConfig) -> FolderSplit:
    """train/ and val/ pooled and re-split by patient; test/ kept, or held out by patient if absent."""
    root = find_root(Path(cfg.root).expanduser())
    files, labels, skipped = scan(root / "train")
    if (root / "val").is_dir():  # the official val/ holds only 16 images: pool it with train
        val_files, val_labels, val_skipped = scan(root / "val")
        files, labels, skipped = files + val_files, labels + val_labels, skipped + val_skipped
    pool_files, pool_labels = np.array(files, dtype=object), np.array(labels, dtype=np.int32)
    pool_patients = np.array([patient_group(p) for p in files])
    if (root / "test").is_dir():
        test_files, test_labels, test_skipped = scan(root / "test")
        test_labels, skipped = np.array(test_labels, dtype=np.int32), skipped + test_skipped
        test_source = "official"
    else:
        keep, held = split_by_patient(pool_patients, pool_labels, cfg.test_fraction, cfg.split_seed)
        test_files, test_labels = list(pool_files[held]), pool_labels[held]
        pool_files, pool_labels, pool_patients = pool_files[keep], pool_labels[keep], pool_patients[keep]
        test_source = "held_out_from_train"
    train, val = split_by_patient(pool_patients, pool_labels, cfg.val_fraction, cfg.split_seed)
    return FolderSplit(root, {"train": list(pool_files[train]), "val": list(pool_files[val]),
                              "test": list(test_files)},
                       {"train": pool_labels[train], "val": pool_labels[val], "test": test_labels},
                       test_source, skipped)


def chest_xray(cfg: DictConfig) -> Data:
    """The folder's patient-disjoint splits (`split_files`), decoded.

    Every file is decoded once into the cache (data.cache_dir). Files that are no images or do not
    decode are left out and listed in Data.skipped; the same image (same bytes) in two splits is
    listed in Data.duplicates.
    """
    found = split_files(cfg)
    all_files = [path for name in SPLITS for path in found.files[name]]
    skipped = list(found.skipped)

    stats = [path.stat() for path in all_files]  # the cache key: any edit changes size or mtime
    stamps = "".join(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n" for p, st in zip(all_files, stats, strict=True))
    key = hashlib.sha256(f"{stamps}|{cfg.image_size}|{DECODER_VERSION}".encode()).hexdigest()[:24]

    def build() -> tuple[np.ndarray, dict]:
        images, ok, digests, problems = decode(all_files, cfg.image_size)
        return images, {"ok": ok.tolist(), "digests": digests, "problems": problems}

    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    images, meta, cache_state = cache.load_or_build(cache_dir, key, build)
    ok = np.array(meta["ok"], dtype=bool)
    row = dict(zip(all_files, np.cumsum(ok) - 1, strict=True))  # file -> its row in `images`
    usable = dict(zip(all_files, ok, strict=True))
    digest = dict(zip(all_files, meta["digests"], strict=True))
    skipped += meta["problems"]

    splits, contents = {}, {}
    for name in SPLITS:
        paths, split_labels = found.files[name], found.labels[name]
        kept = [p for p in paths if usable[p]]
        contents[name] = [(str(path), digest[path]) for path in paths]
        kept_labels = split_labels[[usable[p] for p in paths]]
        if len(set(kept_labels)) < 2:
            raise UserError(f"the {name} split has images of one class only after leaving out "
                            f"{len(meta['problems'])} unreadable files: add NORMAL and PNEUMONIA images")
        splits[name] = Split(np.asarray(images[[row[p] for p in kept]]), kept_labels,
                             np.array([patient_id(p) for p in kept]))
    return Data(**splits, fingerprint=fingerprint(found.root, all_files, meta["digests"]),
                test_source=found.test_source, skipped=skipped,
                duplicates=found_in_two_splits(contents), cache=cache_state)


# --- Input pipeline -----------------------------------------------------------------------------

def model_input(images: np.ndarray, channels: int) -> np.ndarray:
    """Stored uint8 grayscale images as a model takes them outside tf.data: float32, `channels` deep."""
    pixels = images.astype("float32")
    return np.repeat(pixels, 3, axis=-1) if channels == 3 else pixels


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

    return without_autotuning(indices.batch(batch_size).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off. Its background thread made the end of an epoch (Keras
    deleting the epoch's iterator) wait 20-40 s for it, in about one epoch of three on a 2-core
    machine, and the process exit too. Without it, a map runs one call per core and prefetch tunes
    its own buffer: the same throughput, no stalls (README: "Speed")."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
