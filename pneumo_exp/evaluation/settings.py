"""The settings of scoring a set from another site (the `eval` group's schema), apart from the code
that scores, so that the config is checked before TensorFlow loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig

from pneumo_exp import invalid, of_type, one_of, rule

# eval.adapt's choices and the adapted scorings each one logs (adaptation.py; `all` every method).
ADAPT_METHODS = {"none": (), "prior": ("prior",), "bn": ("bn",), "tent": ("tent",),
                 "all": ("prior", "bn", "tent")}
# Methods of older runs, no longer choices (their scores are still in those runs' metrics): `both`,
# prior on bn's probabilities, removed 2026-12-06 (docs/config.md#adapting-to-a-new-site).
REMOVED_METHODS = ("both",)
ADAPT_FIX = (one_of(list(ADAPT_METHODS)) + " (both was removed: BatchNorm statistics re-estimated on "
             "a set absorb part of its change in pneumonia share, which prior then re-estimates wrongly; "
             "use bn)")


def margin() -> Any:
    return rule(lambda v: 0 < v < 1, "use a number between 0 and 1, e.g. 0.1")


def is_sample(value: object) -> bool:
    """A number of images to draw (>= 2), or a folder of labelled images."""
    if isinstance(value, str):
        return Path(value).expanduser().is_dir()
    return of_type(value, int) and value >= 2


@dataclass
class Eval:
    """Label-free adaptation, its check, the shift warning and a site's labelled sample
    (conf/eval/default.yaml says each key)."""
    adapt: Literal[tuple(ADAPT_METHODS)] = rule(None, ADAPT_FIX)
    alpha: float = margin()
    min_images: int = rule(lambda v: v >= 2, "use an integer >= 2")
    labelled: dict[str, Any] | None = rule(None, "use {SET: N or DIR, ...}, e.g. eval.labelled={site_b:50}")
    labelled_bn: bool
    labelled_head: bool
    shift_prevalence_margin: float = margin()
    shift_probability_margin: float = margin()

    def check_with(self, cfg: DictConfig, settings: dict[str, Any]) -> None:
        """Each labelled sample names a scored set and is a number of images or a folder."""
        sets = ["test", *(cfg.data.get("extra_eval") or {})]
        for name, sample in (self.labelled or {}).items():
            if name not in sets:
                raise invalid(f"eval.labelled.{name}", sample, f"name a scored set ({', '.join(sets)}; add a "
                              f"site with data.extra_eval={{{name}:DIR}})")
            if not is_sample(sample):
                raise invalid(f"eval.labelled.{name}", sample, "use a number of images >= 2 to draw from the "
                              "set, or a folder of labelled NORMAL/ and PNEUMONIA/ images")
        if self.labelled_head and (cfg.train.members > 1 or cfg.train.tta_shift):
            raise invalid("eval.labelled_head", True, "revise the head of one network scored without "
                          "test-time augmentation (train.members=1 train.tta_shift=0), or use "
                          "eval.labelled_head=false")
