"""The Kaggle "Chest X-Ray Images (Pneumonia)" layout: {train,val[,test]}/{NORMAL,PNEUMONIA}/ image
files, split again by patient and decoded once into the cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pneumo_exp import UserError, invalid, rule
from pneumo_exp.data import cache, dicom
from pneumo_exp.data.dataset import CLASSES, SPLITS, Data, Images, Split, fingerprint, found_in_two_splits
from pneumo_exp.data.decode import IMAGE_SUFFIXES, SUFFIX_LIST, decode, decoders
from pneumo_exp.data.splits import fold_split, patient_group, patient_id, pneumonia_kind, split_by_patient


def fraction() -> Any:
    return rule(lambda v: 0 < v < 1, "use a fraction strictly between 0 and 1")


@dataclass
class ChestXray(Images):
    """data=chest_xray: a folder of train/{NORMAL,PNEUMONIA} (conf/data/chest_xray.yaml says each key)."""
    root: str = rule(bool, "pass data.root=DIR, the folder holding train/{NORMAL,PNEUMONIA}")
    val_fraction: float = fraction()
    test_fraction: float = fraction()
    cache_dir: str | None = rule(None, "use a folder, or null for no cache")
    extra_eval: dict[str, str] | None = rule(None, "use {NAME: DIR, ...}, e.g. "
                                             "data.extra_eval={site_b:/data/site_b}")

    def __post_init__(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise invalid("data.val_fraction", self.val_fraction,
                          "val_fraction + test_fraction must stay below 1")


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


def beside_class_folders(folder: Path) -> list[str]:
    """"path: why" for each entry of a split folder that no class folder holds (train/COVID/, a
    stray image): nothing reads them, so the run says so. Hidden ones (.DS_Store) stay unsaid."""
    stray = [path for path in sorted(folder.iterdir())
             if path.name not in CLASSES and not path.name.startswith(".")]
    return [f"{path}: {'not a class folder' if path.is_dir() else 'not in a class folder'} "
            "(only NORMAL/ and PNEUMONIA/ are read)" for path in stray]


def scan(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under folder/{NORMAL,PNEUMONIA}, in per-patient subfolders too (NORMAL/patient1/
    x.jpeg, as hospitals export them), their labels (from the class folder), and "path: why" for
    every other file there (.DS_Store, macOS ._ files, text, ...) and for what lies beside the
    class folders."""
    files, labels, ignored = [], [], beside_class_folders(folder)
    for label, cls in enumerate(CLASSES):
        class_dir = folder / cls
        found = []
        for path in sorted(class_dir.rglob("*")) if class_dir.is_dir() else []:
            hidden = any(part.startswith(".") for part in path.relative_to(class_dir).parts)
            if path.is_dir() and not hidden:
                continue
            if hidden:
                ignored += [f"{path}: hidden file"] * path.is_file()
            elif path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                ignored.append(f"{path}: not a {SUFFIX_LIST} file")
            else:
                found.append(path)
        if not found:
            raise UserError(f"no images in {class_dir}: each split needs NORMAL/ and PNEUMONIA/ "
                            f"folders with {SUFFIX_LIST} files")
        files += found
        labels += [label] * len(found)
    return files, labels, ignored


@dataclass
class FolderSplit:
    """A Kaggle-layout folder's image files split by patient, before anything is decoded."""
    root: Path
    files: dict[str, list[Path]]  # split name -> its files
    labels: dict[str, np.ndarray]  # split name -> their labels (int32, 1 = pneumonia)
    test_source: str
    skipped: list[str]  # "path: why" of each file that is no image


def split_files(cfg: DictConfig) -> FolderSplit:
    """train/ and val/ pooled and re-split by patient (data.val_fraction, or fold data.fold of
    data.folds); test/ kept, or held out by patient if absent."""
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
    if cfg.folds:
        train, val = fold_split(pool_patients, pool_labels, cfg.folds, cfg.fold, cfg.split_seed)
    else:
        train, val = split_by_patient(pool_patients, pool_labels, cfg.val_fraction, cfg.split_seed)
    return FolderSplit(root, {"train": list(pool_files[train]), "val": list(pool_files[val]),
                              "test": list(test_files)},
                       {"train": pool_labels[train], "val": pool_labels[val], "test": test_labels},
                       test_source, skipped)


def need_pydicom(files: list[Path]) -> None:
    """One line, before decoding, where DICOM files are to be read without pydicom installed."""
    dicoms = [path for path in files if path.suffix.lower() == ".dcm"]
    if dicoms and not dicom.available():
        raise UserError(f"{len(dicoms)} .dcm files, such as {dicoms[0]}: {dicom.NEEDS_PYDICOM}")


def chest_xray(cfg: DictConfig) -> Data:
    """The folder's patient-disjoint splits (`split_files`), decoded.

    Every file is decoded once into the cache (data.cache_dir). Files that are no images or do not
    decode are left out and listed in Data.skipped; the same image (same bytes) in two splits is
    listed in Data.duplicates.
    """
    found = split_files(cfg)
    all_files = sorted(path for name in SPLITS for path in found.files[name])  # one cache for every split
    skipped = list(found.skipped)

    stats = [path.stat() for path in all_files]  # the cache key: any edit changes size or mtime
    stamps = "".join(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n" for p, st in zip(all_files, stats, strict=True))
    key = hashlib.sha256(f"{stamps}|{cfg.image_size}|{decoders()}".encode()).hexdigest()[:24]

    def build() -> tuple[np.ndarray, dict]:
        need_pydicom(all_files)  # not cached as unreadable: installing pydicom must be enough
        images, ok, digests, problems = decode(all_files, cfg.image_size)
        return images, {"ok": ok.tolist(), "digests": digests, "problems": problems}

    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    images, meta, cache_state = cache.load_or_build(cache_dir, key, build)
    ok = np.array(meta["ok"], dtype=bool)
    row = dict(zip(all_files, np.cumsum(ok) - 1, strict=True))  # file -> its row in `images`
    usable = dict(zip(all_files, ok, strict=True))
    digest = dict(zip(all_files, meta["digests"], strict=True))
    skipped += meta["problems"]

    check_one_class_each(found, usable, digest)
    splits, contents = {}, {}
    for name in SPLITS:
        paths, split_labels = found.files[name], found.labels[name]
        kept = [p for p in paths if usable[p]]
        contents[name] = [(str(path), digest[path]) for path in kept]  # left-out files are no duplicates
        kept_labels = split_labels[[usable[p] for p in paths]]
        if len(set(kept_labels)) < 2:
            raise no_class_left(name, paths, split_labels, usable, meta["problems"])
        splits[name] = Split(np.asarray(images[[row[p] for p in kept]]), kept_labels,
                             np.array([patient_id(p) for p in kept]),
                             np.array([pneumonia_kind(p) for p in kept]),
                             np.array([str(p.relative_to(found.root)) for p in kept]))
    return Data(**splits, fingerprint=fingerprint(found.root, all_files, meta["digests"]),
                test_source=found.test_source, skipped=skipped,
                duplicates=found_in_two_splits(contents), cache=cache_state)


def no_class_left(name: str, paths: list[Path], labels: np.ndarray, usable: dict[Path, bool],
                  problems: list[str]) -> UserError:
    """A split with one class left once unreadable files are out: what made the other class's files
    unreadable (a codec missing, most often), which the fix depends on."""
    lost = [p for p, label in zip(paths, labels, strict=True) if not usable[p] and label not in
            {label for q, label in zip(paths, labels, strict=True) if usable[q]}]
    if not lost:
        return UserError(f"the {name} split has images of one class only: add NORMAL and PNEUMONIA images")
    why = next(line for line in problems if line.startswith(f"{lost[0]}: "))
    fix = ("install what decodes them (the reason names it) or convert them to PNG" if "cannot decode" in why
           else "replace them with readable copies")
    cls = CLASSES[int(labels[paths.index(lost[0])])]
    return UserError(f"the {name} split has no {cls} image left: its {len(lost)} files are unreadable, "
                     f"e.g. {why[:150]}: {fix}")


def check_one_class_each(found: FolderSplit, usable: dict[Path, bool], digest: dict[Path, str]) -> None:
    """The same image (same pixels or bytes) in NORMAL/ and in PNEUMONIA/ would be trained on, or
    scored, with two contradicting labels: one line naming the first such pair, before training."""
    seen: dict[str, tuple[Path, int]] = {}
    clashes = []
    for name in SPLITS:
        for path, label in zip(found.files[name], found.labels[name], strict=True):
            if not usable[path]:
                continue
            first = seen.setdefault(digest[path], (path, int(label)))
            if first[1] != label:
                clashes.append((first[0], path))
    if clashes:
        a, b = clashes[0]
        raise UserError(f"{len(clashes)} image(s) in both NORMAL/ and PNEUMONIA/ (the same content), first: "
                        f"{a} = {b}: remove each from the folder of the class it does not show")
