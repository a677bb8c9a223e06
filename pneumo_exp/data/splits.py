"""Patient-disjoint splits: which patient a Kermany file belongs to, and holding patients out whole."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from pneumo_exp import UserError
from pneumo_exp.data.dataset import CLASSES

# person123_bacteria_456.jpeg -> person123; IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg -> IM-0115, IM-1427
PATIENT_PATTERNS = (re.compile(r"(person\d+)_"), re.compile(r"(IM-\d+)-"))


def patient_id(path: Path) -> str:
    """The patient a Kermany file name belongs to; else, for a file in a per-patient subfolder of
    its class folder (NORMAL/patient1/…/x.jpeg), that subfolder; "" where neither says."""
    for pattern in PATIENT_PATTERNS:
        match = pattern.search(path.name)
        if match:
            return match.group(1)
    for folder in path.parents:
        if folder.name in CLASSES:
            return ""
        if folder.parent.name in CLASSES:
            return folder.name
    return ""


KIND_PATTERN = re.compile(r"_(bacteria|virus)_")  # person1_virus_6.jpeg -> virus


def pneumonia_kind(path: Path) -> str:
    """"bacteria" or "virus" where a Kermany file name says which pneumonia it shows, else ""."""
    match = KIND_PATTERN.search(path.name)
    return match.group(1) if match else ""


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


def fold_split(groups: np.ndarray, labels: np.ndarray, folds: int, fold: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (training, validation) of cross-validation fold `fold` of `folds` over the pooled
    images: split by `groups` (patients; each image its own where none is known) and stratified by
    class (scikit-learn's StratifiedGroupKFold; StratifiedKFold where every group is one image),
    shuffled by `seed`. A pure function of the seed and the images' order, groups and labels."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    unique, first = np.unique(groups, return_index=True)
    fewest = min(np.sum(labels[first] == 0), np.sum(labels[first] == 1))
    if fewest < folds:
        raise UserError(f"data.folds={folds} needs at least {folds} patients of each class, and the "
                        f"pooled training images have {fewest} in one: use fewer folds or add patients")
    if len(unique) == len(groups):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed).split(groups, labels)
    else:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(groups, labels, groups)
    return next(fit for k, fit in enumerate(splitter) if k == fold)
