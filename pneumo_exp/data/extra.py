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
from pneumo_exp.data.folder import scan
from pneumo_exp.data.splits import patient_id, pneumonia_kind

NAME = re.compile(r"[A-Za-z0-9_]+")  # it prefixes metric names: extra_NAME_auc


def folders(cfg: DictConfig) -> dict[str, Path]:
    """Each extra set's folder, checked: a name fit for a metric, a folder with NORMAL/ and
    PNEUMONIA/ images. One line naming the set otherwise, before anything is decoded."""
    found = {}
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
        found[str(name)] = path
    return found


def load_folder(folder: Path, image_size: int) -> tuple[Split, list[str]]:
    """One labelled folder (NORMAL/, PNEUMONIA/) decoded as the training images are, and "path: why"
    of every file left out."""
    files, labels, ignored = scan(folder)
    images, ok, _, problems = decode(files, image_size)
    kept = [path for path, usable in zip(files, ok, strict=True) if usable]
    patients = np.array([patient_id(path) for path in kept])
    kinds = np.array([pneumonia_kind(path) for path in kept])
    return Split(images, np.array(labels, dtype=np.int32)[ok], patients, kinds), ignored + problems


def load(cfg: DictConfig) -> tuple[dict[str, Split], list[str]]:
    """The extra sets decoded as the training images are, and "path: why" of every file left out."""
    sets, skipped = {}, []
    for name, folder in folders(cfg).items():
        sets[name], left_out = load_folder(folder, cfg.image_size)
        skipped += left_out
    return sets, skipped
