"""What a loaded source is: its three splits of decoded images, and what was found on the way; and
the settings every source has (Images, the base of each data choice's schema)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pneumo_exp import invalid, is_seed, rule

CLASSES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
SPLITS = ("train", "val", "test")
# Largest square side: 5,000 images at 1024 px are 5 GB decoded, held in memory.
MAX_IMAGE_SIZE = 1024


@dataclass
class Images:
    """What every data choice sets: the square side images are resized to, their channels, and the
    cross-validation fold (data.folds, data.fold) with the seed that splits it."""
    image_size: int
    channels: int = rule(lambda v: v in (1, 3), "use 1 or 3")
    split_seed: int = rule(is_seed, "use an integer from 0 to 2**32 - 1")
    folds: int = rule(lambda v: v == 0 or v >= 2, "use 0 (no cross-validation) or a number of folds >= 2")
    fold: int = rule(lambda v: v >= 0, "use a fold from 0 to data.folds - 1")

    def check_with(self, cfg: DictConfig, settings: dict[str, Any]) -> None:
        """The side from the network's smallest input (its schema's min_image_size) to MAX_IMAGE_SIZE;
        a fold among the folds."""
        low = getattr(settings["model"], "min_image_size", 1)
        if not low <= self.image_size <= MAX_IMAGE_SIZE:
            raise invalid("data.image_size", self.image_size,
                          f"{cfg.model.name} needs an integer from {low} to {MAX_IMAGE_SIZE}")
        if self.fold >= max(self.folds, 1):
            fix = (f"use a fold from 0 to {self.folds - 1}" if self.folds else
                   "cross-validate with data.folds=K (K >= 2), or leave data.fold at 0")
            raise invalid("data.fold", self.fold, fix)


@dataclass
class Split:
    images: np.ndarray  # (n, size, size, 1) uint8
    labels: np.ndarray  # (n,) int32, 1 = pneumonia
    patients: np.ndarray  # (n,) patient id of each image ("" where the source has none)
    kinds: np.ndarray | None = None  # (n,) "bacteria", "virus" or "" (as the file names say), if known
    names: np.ndarray | None = None  # (n,) each image's name in its source (file below root, npz row)


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
    extra: dict[str, Split] = field(default_factory=dict)  # data.extra_eval's sets, scored only
    extra_shared: dict[str, int] = field(default_factory=dict)  # their patient ids also in train or val

    def counts(self) -> dict[str, int]:
        """Images per split and class, e.g. n_train_normal."""
        return {
            f"n_{name}_{cls.lower()}": int(np.sum(getattr(self, name).labels == label))
            for name in SPLITS
            for label, cls in enumerate(CLASSES)
        }

    def shared_patients(self) -> dict[str, int]:
        """Patients found in two splits at once, among the images whose patient is known: 0
        everywhere, or the split leaks. A leak is a leak whatever other images name no patient;
        no leak is claimed (empty) unless every image's patient is known (PneumoniaMNIST publishes
        none; a file name may carry none), so that no 0 claims a check never made."""
        ids = {name: set(getattr(self, name).patients) - {""} for name in SPLITS}
        shared = {f"patients_shared_{a}_{b}": len(ids[a] & ids[b])
                  for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
        every_one_known = not any((getattr(self, name).patients == "").any() for name in SPLITS)
        return shared if any(shared.values()) or every_one_known else {}


def found_in_two_splits(contents: dict[str, list[tuple[str, str]]]) -> list[str]:
    """"a = b" for each content found in two splits (its first image in each), from
    {split: [(image name, md5 of its pixels or bytes), ...]}."""
    owners: dict[str, dict[str, str]] = {}
    for split, images in contents.items():
        for name, digest in images:
            owners.setdefault(digest, {}).setdefault(split, name)
    return sorted(" = ".join(where.values()) for where in owners.values() if len(where) > 1)


def fingerprint(root: Path, files: list[Path], md5s: list[str]) -> str:
    """Hash of every file's path (below root) and content: changes when any image is added,
    removed, renamed or edited, and not when the folder moves."""
    digest = hashlib.sha256()
    for name, md5 in sorted(zip((str(p.relative_to(root)) for p in files), md5s, strict=True)):
        digest.update(f"{name}\t{md5}\n".encode())
    return f"files:{digest.hexdigest()[:16]}"
