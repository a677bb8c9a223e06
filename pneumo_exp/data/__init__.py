"""Data, from the files to the model's batches:

find the image files (folder.py) or read the npz (npz.py) → split them by patient (splits.py) →
decode each image once (decode.py, kept in cache.py's decoded-image cache) → tf.data batches
(pipeline.py). Everything before pipeline.py is plain numpy/Pillow, so bad data fails before
TensorFlow loads: only `pneumo_exp.data.pipeline` imports it. Images are kept as one grayscale uint8
array per split (the X-rays are grayscale); conversion to float and to 3 channels happens per batch,
in the graph.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig

from pneumo_exp import UserError
from pneumo_exp.data import extra, folder, npz
from pneumo_exp.data.dataset import CLASSES, SPLITS, Data, Split
from pneumo_exp.data.decode import IMAGE_SUFFIXES, SUFFIX_LIST, decode

__all__ = ["CLASSES", "IMAGE_SUFFIXES", "SPLITS", "SUFFIX_LIST", "Data", "Split", "check", "decode", "load"]


def load(cfg: DictConfig) -> Data:
    """Read the source named by `data=` into decoded, split arrays, with the extra evaluation sets
    (data.extra_eval) of a folder source beside them."""
    sources = {"pneumoniamnist": npz.pneumoniamnist, "chest_xray": folder.chest_xray}
    dataset = sources[cfg.name](cfg)
    if cfg.name != "chest_xray":
        return dataset
    sets, skipped = extra.load(cfg)
    return dataclasses.replace(dataset, extra=sets, skipped=dataset.skipped + skipped,
                               extra_shared=extra.shared_patients(sets, dataset.train, dataset.val))


def check(cfg: DictConfig, labelled: DictConfig | None = None) -> None:
    """Fail fast on a missing source, or a labelled sample's folder (eval.labelled) without its
    classes, before the store opens and anything decodes."""
    if cfg.name == "chest_xray":
        folder.find_root(Path(cfg.root).expanduser())
        extra.folders(cfg)
    else:
        npz.check_path(cfg)
    for name, sample in (labelled or {}).items():
        if isinstance(sample, str):
            try:
                folder.scan(Path(sample).expanduser())
            except UserError as error:
                raise UserError(f"eval.labelled.{name}: {error}") from error
