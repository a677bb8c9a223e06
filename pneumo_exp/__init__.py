"""pneumo-exp: run, compare and report pneumonia-detection ablations (Hydra + Keras + MLflow)."""

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import OmegaConf

# oneDNN kernels nearly double CPU training speed; TensorFlow reads this only at import time,
# so it is set here, before any module of ours imports TensorFlow. A user's own value wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ info logs off the console



def store_uri_default() -> str:
    """The MLflow store the commands use unless told otherwise: $MLFLOW_TRACKING_URI, else the
    project's SQLite file (conf/tracking/local.yaml says the same)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")


def cpus_per_job(jobs: int) -> int:
    """This process's CPUs (its affinity: what SLURM or taskset gave it) shared among `jobs`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // int(jobs))


# `${project_root:}` in conf/ lets Hydra find sweeps/ from any working directory;
# `${cpus_per_job:N}` gives each of N parallel jobs its share of the cores.
OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[1]),
                                replace=True)
OmegaConf.register_new_resolver("cpus_per_job", cpus_per_job, replace=True)


def file_in_the_way(folder: Path) -> Path | None:
    """The file that stops `folder` from being made: at its path or above it (None: it can be)."""
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    return None if existing.is_dir() else existing


class UserError(Exception):
    """A problem the user can fix (bad config, missing data): shown as one line, no traceback."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A UserError ends the process with `error: ...` on stderr and exit code 2."""
    try:
        yield
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def exit_code_of_signal() -> Iterator[None]:
    """End the process with the shell's code for the signal that stopped it: 143 for SIGTERM, 130
    for Ctrl-C. (lifecycle turns both into KeyboardInterrupt, named by the signal, so that runs end
    KILLED; Python itself would exit 130 for either.)"""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        name = str(interrupt.args[0]) if interrupt.args else "SIGINT"
        number = signal.Signals[name] if name in signal.Signals.__members__ else signal.SIGINT
        print(f"stopped by {name}", file=sys.stderr)
        sys.exit(128 + number)
