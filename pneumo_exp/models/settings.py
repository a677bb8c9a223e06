"""The settings of training (the `regularization` and `train` groups' schemas), apart from the code
that trains, so that the config is checked before TensorFlow loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig

from pneumo_exp import invalid, is_number, one_of, rule

# train.threshold's named rules (evaluation/measure.choose_threshold); a number is used as it is.
THRESHOLD_RULES = ("youden", "sensitivity", "calibrated", "balanced")
LARGEST_DROPOUT = 0.7  # the seed CNN's largest Dropout rate, which dropout_scale multiplies


def at_least(low: int, why: str = "") -> Any:
    return rule(lambda v: v >= low, f"use an integer >= {low}{why}")


@dataclass
class Regularization:
    """BatchNorm and Dropout, switched on or off (conf/regularization/)."""
    batch_norm: bool
    dropout: bool
    dropout_scale: float = rule(lambda v: 0 <= v < 1 / LARGEST_DROPOUT, "use a number in [0, 1.42): the "
                                "largest Dropout rate, 0.7, times it must stay below 1")

    @property
    def dropout_factor(self) -> float:
        """What the networks multiply their Dropout rates by: 0 without Dropout."""
        return self.dropout_scale if self.dropout else 0.0


@dataclass
class Train:
    """The fit, the operating point, test-time augmentation and threads (conf/train/default.yaml)."""
    epochs: int = at_least(1)
    batch_size: int = at_least(1)
    learning_rate: float = rule(lambda v: v > 0, "use a positive, finite number")
    lr_schedule: Literal["constant", "cosine"]
    early_stopping_patience: int = at_least(0, " (0 turns early stopping off)")
    threshold: str | float = rule(lambda v: v in THRESHOLD_RULES if isinstance(v, str) else 0 < v < 1,
                                  f"{one_of(THRESHOLD_RULES)}, or a number between 0 and 1")
    target_sensitivity: float = rule(lambda v: 0 < v <= 1, "use a number in (0, 1]")
    weight_decay: float = rule(lambda v: v >= 0, "use a number >= 0 (e.g. 0.05; 0 = none) whose product "
                               "with train.learning_rate stays below 1")
    ema_momentum: float = rule(lambda v: 0 <= v < 1, "use a number in [0, 1), e.g. 0.99 (0 = no weight "
                               "averaging)")
    tta_shift: float = rule(lambda v: 0 <= v < 0.5, "use a fraction in [0, 0.5) of the image side (0 = no "
                            "test-time augmentation)")
    members: int = at_least(1, " (the number of networks averaged; 1 = no ensemble)")
    resume: bool
    intra_op_threads: int = at_least(0, " (0 = TensorFlow's default)")
    inter_op_threads: int = at_least(0, " (0 = TensorFlow's default)")
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"]
    jit_compile: bool
    run_eagerly: bool

    def __post_init__(self) -> None:
        decay = self.weight_decay * self.learning_rate
        if not is_number(decay) or decay >= 1:
            raise invalid("train.weight_decay", self.weight_decay,
                          Train.__dataclass_fields__["weight_decay"].metadata["fix"])

    def check_with(self, cfg: DictConfig, settings: dict[str, Any]) -> None:
        """Test-time augmentation shifts the image by at least one pixel."""
        size = cfg.data.image_size
        if self.tta_shift and round(self.tta_shift * size) < 1:
            raise invalid("train.tta_shift", self.tta_shift,
                          f"it shifts a {size} px image by 0 pixels: use more than {0.5 / size:.4g}, "
                          "or 0 for none")
