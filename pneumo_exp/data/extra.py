"""Extra evaluation sets (`data.extra_eval={NAME: DIR}`): labelled folders of another distribution
(another hospital, another scanner), each scored once beside the test split at the same threshold.

Nothing from them reaches training, early stopping or the choice of threshold: they are loaded
into their own Splits, apart from train/val/test, and only the scoring stage reads them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pneumo_exp import UserError
from pneumo_exp.data.dataset import Split
from pneumo_exp.data.decode import decode
from pneumo_exp.data.folder import find_root, scan
from pneumo_exp.data.splits import patient_id, pneumonia_kind

NAME = re.compile(r"[A-Za-z0-9_]+")  # it prefixes metric names: extra_NAME_auc


def folders(cfg: DictConfig) -> dict[str, Path]:
    """Each extra set's folder, checked: a name fit for a metric, a folder with NORMAL/ and
    PNEUMONIA/ images. One line naming the set otherwise, before anything is decoded."""
    found, root = {}, find_root(Path(cfg.root).expanduser())
    for name, folder in (cfg.get("extra_eval") or {}).items():
        key = f"data.extra_eval.{name}"
        if not NAME.fullmatch(str(name)):
            raise UserError(f"{key}: the name {name!r} is invalid: use letters, digits and _ only "
                            "(it prefixes the metrics, e.g. extra_site_b_auc)")
        path = Path(str(folder)).expanduser()
        if not path.is_dir():
            raise UserError(f"{key}={folder} is not a folder: pass a folder holding NORMAL/ and "
                            "PNEUMONIA/ image folders")
        try:
            scan(path)
        except UserError as error:
            raise UserError(f"{key}: {error}") from error
        training = [part for part in (root / "train", root / "val")
                    if overlaps(path.resolve(), part.resolve())]
        if training:
            raise UserError(f"{key}={folder} holds the run's own training images ({training[0]}): pass a "
                            "folder of another site's images, of other patients")
        found[str(name)] = path
    return found


def overlaps(a: Path, b: Path) -> bool:
    """One folder is the other or below it."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def shared_patients(sets: dict[str, Split], train: Split, val: Split) -> dict[str, int]:
    """Per extra set, how many of its patient ids the training and validation images carry too:
    that set then scores patients the model learned from, or chose its threshold on, unless the ids
    merely repeat (the official Kermany test reuses 107 of site_b's 169 ids from training)."""
    seen = (set(train.patients) | set(val.patients)) - {""}
    return {name: len(set(split.patients) & seen) for name, split in sets.items()}


def load_folder(folder: Path, image_size: int) -> tuple[Split, list[str]]:
    """One labelled folder (NORMAL/, PNEUMONIA/) decoded as the training images are, and "path: why"
    of every file left out."""
    files, labels, ignored = scan(folder)
    images, ok, _, problems = decode(files, image_size)
    kept = [path for path, usable in zip(files, ok, strict=True) if usable]
    patients = np.array([patient_id(path) for path in kept])
    kinds = np.array([pneumonia_kind(path) for path in kept])
    names = np.array([path.relative_to(folder).as_posix() for path in kept])  # as its predictions name it
    return Split(images, np.array(labels, dtype=np.int32)[ok], patients, kinds, names), ignored + problems


def load(cfg: DictConfig) -> tuple[dict[str, Split], list[str]]:
    """The extra sets decoded as the training images are, and "path: why" of every file left out."""
    sets, skipped = {}, []
    for name, folder in folders(cfg).items():
        sets[name], left_out = load_folder(folder, cfg.image_size)
        skipped += left_out
    return sets, skipped
