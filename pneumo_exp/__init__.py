"""pneumo-exp: run, compare and report pneumonia-detection ablations (Hydra + Keras + MLflow)."""

import os
from pathlib import Path

from omegaconf import OmegaConf

# oneDNN kernels nearly double CPU training speed; TensorFlow reads this only at import time,
# so it is set here, before any module of ours imports TensorFlow. A user's own value wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ info logs off the console

# `${project_root:}` in conf/ lets Hydra find sweeps/ from any working directory.
OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[1]),
                                replace=True)


class UserError(Exception):
    """A problem the user can fix (bad config, missing data): shown as one line, no traceback."""
