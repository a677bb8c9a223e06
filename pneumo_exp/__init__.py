"""pneumo-exp: run, compare and report pneumonia-detection ablations (Hydra + Keras + MLflow)."""

import contextlib
import dataclasses
import errno
import importlib
import math
import os
import re
import signal
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

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


def invalid(key: str, value: object, fix: str) -> UserError:
    """The one line for a config value that cannot be used: `KEY=VALUE is invalid: FIX`."""
    return UserError(f"{key}={value!r} is invalid: {fix}")


def rule(ok: Callable[[Any], bool] | None, fix: str, **field: Any) -> Any:
    """A schema field (a dataclass field: docs/extending.md) whose value, once of the field's type,
    must also pass `ok` (None: any value of it); `fix` says what to use instead, for a wrong type too."""
    return dataclasses.field(metadata={"ok": ok, "fix": fix}, **field)


@dataclasses.dataclass
class NoSettings:
    """The schema of a choice without settings of its own (imbalance=none, augment=none)."""


def is_number(value: object) -> bool:
    """A finite int or float (not a bool: True would pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


TYPE_FIXES = {bool: "use true or false", int: "use an integer", float: "use a finite number",
              str: "use a string"}


def of_type(value: object, hint: Any) -> bool:
    """Whether `value` (plain YAML data) is of the annotated type: strictly, so that 1 is no bool,
    5 no string and 3.0 no integer (OmegaConf would convert each)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(of_type(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, dict):
        items = value if origin is list else value.values() if isinstance(value, dict) else None
        return isinstance(value, origin) and all(of_type(item, args[-1]) for item in items)
    if hint is Any:
        return True
    if hint is float:
        return is_number(value)
    return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))


def type_fix(hint: Any) -> str:
    """What to use instead of a value that is not of type `hint`."""
    if get_origin(hint) is Literal:
        return one_of([str(arg).lower() if arg is None else str(arg) for arg in get_args(hint)])
    return TYPE_FIXES.get(hint, f"use a value of type {hint}")


def one_of(options: list[str] | tuple[str, ...]) -> str:
    """`use a, b or c`: the fix of a value that is none of `options`."""
    return f"use {', '.join(options[:-1])} or {options[-1]}" if len(options) > 1 else f"use {options[0]}"


def unknown_key(key: str) -> str:
    """The one line for a key no schema defines: one of another choice of its group (data.root
    without data=chest_xray), a typo, or a key a newer version renamed."""
    group, _, rest = key.partition(".")
    owners = choices_with(group, rest.split(".")[0]) if rest else []
    if owners:
        return (f"{key} is a key of {' and '.join(f'{group}={c}' for c in owners)}, not of the {group} "
                f"chosen: add {group}={owners[0]}")
    return f"unknown config key {key}: check its spelling against conf/ (`python -m pneumo_exp --cfg job` " \
        "prints every key)"


def choices_with(group: str, key: str) -> list[str]:
    """The choices of conf/GROUP/ whose YAML sets `key`."""
    from pneumo_exp.config import CONF

    return sorted(path.stem for path in (CONF / group).glob("*.yaml") if key in (OmegaConf.load(path) or {}))


def find(path: object, value: object, key: str) -> Any:
    """The object a dotted path names (`package.module.name`), or a one-line error saying why not."""
    module, _, name = path.rpartition(".") if isinstance(path, str) else ("", "", "")
    if not module:
        raise invalid(key, value, "name a function or class by its dotted path, e.g. mylab.nets.build")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as error:
        raise invalid(key, value, f"cannot import {module} ({error}): is its folder on PYTHONPATH?"
                      ) from error
    if not callable(found):
        raise invalid(key, value, f"{module} has no function or class {name}")
    return found


def is_seed(value: object) -> bool:
    """What NumPy's and TensorFlow's seeding accept alike."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A UserError ends the process with `error: ...` on stderr and exit code 2."""
    try:
        yield
    except UserError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        sys.exit(2)


def disk_full(error: BaseException) -> str | None:
    """Why, if `error` or what caused it is a full disk (or quota): an OSError of ENOSPC or EDQUOT,
    or the same wrapped in a library's own error (SQLite's "database or disk is full", HDF5's). The
    deepest such error says it plainest (a wrapper's first line may be its own advice)."""
    why, seen = None, error
    while seen is not None:
        text = str(seen)
        if (isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
                words in text for words in ("database or disk is full", "No space left on device")):
            why = text.splitlines()[0][:150]
        seen = seen.__cause__ or seen.__context__
    return why


PASSWORD_IN_URI = re.compile(r"(?P<user>\b[a-z][a-z0-9+.-]*://[^/:@\s]*):[^@/\s]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """`scheme://user:PASSWORD@host` -> `scheme://user:***@host`: a password in a URI (a database
    store's, docs/tracking.md) is never printed, nor logged in a param, tag or artifact."""
    return PASSWORD_IN_URI.sub(r"\g<user>:***@", text)


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
