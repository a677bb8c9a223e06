"""The settings of tracking and launching (the `tracking` and `launcher` groups' schemas), apart from
MLflow, so that the config is checked before it loads. The store's URI itself is checked as it
opens (store.store_uri)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pneumo_exp import file_in_the_way, rule


def is_folder(value: object) -> bool:
    """A path that is, or can become, a folder: no file in its place or above it."""
    return bool(value) and file_in_the_way(Path(str(value)).expanduser()) is None


@dataclass
class Tracking:
    """Where runs are logged and what they log (conf/tracking/ says each key)."""
    uri: str = rule(bool, "use sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")
    artifact_location: str | None = rule(lambda v: v is None or is_folder(v), "use a folder path (not a "
                                         "file, nor under one), or null for MLflow's default")
    experiment: str = rule(lambda v: bool(v.strip()), "use a non-empty name, e.g. pneumo_exp")
    backup_dir: str = rule(is_folder, "use a folder path (not a file, nor under one), e.g. mlruns/backups")
    rerun: bool
    log_figures: bool
    log_model: bool


@dataclass
class Launcher:
    """How a multirun's jobs run (conf/launcher/: its hydra keys are Hydra's own)."""
    jobs: int = rule(lambda v: v >= 1, "use an integer >= 1")
