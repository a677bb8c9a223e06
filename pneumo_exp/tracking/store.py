"""The MLflow store: which one a URI names, whether it is one, and opening it safely.

A run opens it for writing (`open_experiment`: created on first use, under a lock, so that two runs
started together on a fresh store are both recorded); `report` and `predict` only read it
(`open_for_reading`: never creating an empty store where there was none). Each problem is one
UserError saying what is wrong with the store, not a guess.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from omegaconf import DictConfig

from pneumo_exp import UserError, disk_full, redact
from pneumo_exp.tracking import lifecycle, reading

# MLflow logs each SQLAlchemy error with its traceback, then raises it: what is raised is enough,
# and becomes one line (a full disk: __main__.py; a store that cannot open: open_experiment).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

SQLITE = "sqlite:///"
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
# The MLflow UI (3.x) opens an experiment on its GenAI overview (traces, tokens) unless it is told
# that the experiment trains models: then the runs table, with the project's metrics, opens.
MODEL_TRAINING = {"mlflow.experimentKind": "custom_model_development"}
WRITABLE = "pass tracking.uri=sqlite:////writable/path/mlflow.db"
CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other stores)."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def store_uri(uri: str) -> str:
    """The URI with its scheme checked and a relative SQLite path made absolute, so `mlflow ui`
    works from anywhere."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme in ("", "file"):
        raise UserError(f"tracking URI {uri!r} names a folder, which MLflow 3 no longer keeps runs in: "
                        "use sqlite:///PATH/mlflow.db")
    if scheme not in SCHEMES:
        raise UserError(f"tracking URI {uri!r} has the unknown scheme {scheme!r}: use "
                        "sqlite:///PATH/mlflow.db, http(s)://HOST:PORT (a tracking server) or a database "
                        "URI (postgresql://...)")
    if scheme in ("http", "https") and redact(uri) != uri:
        raise UserError(f"tracking URI {redact(uri)!r} holds a password, which every run would store: "
                        f"drop it from the URI and set {CREDENTIALS} in the environment")
    path = sqlite_path(uri)
    if path is None:
        return uri
    if not path.name:
        raise UserError(f"tracking URI {uri!r} names no database file: use sqlite:///PATH/mlflow.db "
                        "(relative) or sqlite:////ABSOLUTE/PATH/mlflow.db")
    path = path.expanduser().resolve()
    if path.is_dir():  # else MLflow retries "unable to open database file" for 105 s
        raise UserError(f"tracking URI {uri!r} names the folder {path}, not a database file: use "
                        f"sqlite:///{path / 'mlflow.db'}")
    return SQLITE + str(path)


def check_sqlite_file(path: Path) -> set[str]:
    """The tables of the database at `path` (none where there is no file, or an empty one). An
    existing, non-empty file must be an MLflow store: never write MLflow's tables into a database of
    another application, nor take a corrupt file for one."""
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as error:
        raise UserError(f"{path} is not a readable SQLite database ({error}): it is corrupt or another "
                        "kind of file; restore it from a backup or pass a new tracking URI") from error
    if tables and "experiments" not in tables:
        names = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        raise UserError(f"{path} is a database of another application (tables: {names}), not an MLflow "
                        "store: pass a new file, e.g. tracking.uri=sqlite:///mlruns/mlflow.db")
    return tables


def check_writable(path: Path) -> None:
    """A store that cannot be written fails now, not as tracebacks once the run has opened. The probe
    writes inside a transaction that is rolled back: the store is left as it was."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE pneumo_exp_write_probe (x)")
            db.rollback()
    except sqlite3.Error as error:
        fix = ("free space on its disk, or pass a tracking.uri on another disk" if disk_full(error) else
               f"make the file and its folder writable, or {WRITABLE}")
        raise UserError(f"cannot write to the MLflow store {path} ({error}): {fix}") from error


def _check_server(uri: str) -> None:
    """A tracking server that does not answer fails now, not after MLflow's minutes of retries."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except OSError as error:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({error}): start it "
                        "(see docs/tracking.md) or pass another tracking.uri") from error


def refusal(error: Exception, experiment: str = "") -> str | None:
    """What a tracking server's refusal means, and what to do (None: the error is no refusal).
    Credentials come from the environment MLflow reads, never from the command line (docs/tracking.md)."""
    code = getattr(error, "error_code", None)
    if code == "UNAUTHENTICATED":
        return f"the MLflow tracking server refused the request: no or wrong credentials; set {CREDENTIALS}"
    if code == "PERMISSION_DENIED":
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "this user")
        where = f" to experiment {experiment!r}" if experiment else ""
        return (f"the MLflow tracking server denied {user} access{where}: ask its owner or an admin for "
                "permission (EDIT to add runs, READ to report), or pass tracking.experiment=ANOTHER_NAME")
    return None


@contextlib.contextmanager
def refusals(experiment: str = "") -> Iterator[None]:
    """A tracking server's 401 or 403 on the way is one line saying what to do, not a traceback."""
    try:
        yield
    except mlflow.exceptions.MlflowException as error:
        message = refusal(error, experiment)
        if message is None:
            raise
        raise UserError(message) from error


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _fix(error: Exception) -> str:
    """What to do about an error MLflow, SQLAlchemy or the OS raised while opening the store."""
    text = str(error).lower()
    if isinstance(error, ModuleNotFoundError) and error.name:  # a database URI's driver
        return f"install its database driver: pip install {error.name.split('.')[0]}"
    if disk_full(error):
        return "free space on its disk, or pass a tracking.uri on another disk"
    if "out-of-date database schema" in text:
        return "upgrade it with `mlflow db upgrade URI` (back it up first)"
    if isinstance(error, PermissionError | NotADirectoryError | FileExistsError) or any(
            word in text for word in ("readonly", "read-only", "permission", "unable to open")):
        return f"make its folder writable, or {WRITABLE}"
    return "pass a tracking.uri that names a working MLflow store (see docs/tracking.md)"


def _create_experiment(cfg: DictConfig) -> None:
    """The experiment, with its artifact folder, if the store does not have it yet."""
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise reading.deleted_experiment(experiment, "pass tracking.experiment=ANOTHER_NAME")
    if experiment is None:
        location = Path(cfg.artifact_location).expanduser().resolve() if cfg.artifact_location else None
        if location is not None:
            location.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(cfg.experiment, artifact_location=location.as_uri() if location else None,
                                 tags=MODEL_TRAINING)
    else:  # an experiment made by an older version gets the tag too
        for key, value in MODEL_TRAINING.items():
            if experiment.tags.get(key) != value:
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    mlflow.set_experiment(cfg.experiment)


def exclusive(uri: str | None = None) -> contextlib.AbstractContextManager:
    """A lock that processes opening the SQLite store `uri` (default: the current one) share, beside
    its file, so that what one finds and then creates (the store's tables, a sweep's parent run)
    another cannot create in between. A server or database store has no such file: nothing is
    locked there."""
    path = sqlite_path(uri or mlflow.get_tracking_uri())
    return FileLock(f"{path}.lock") if path is not None else contextlib.nullcontext()


def open_experiment(cfg: DictConfig) -> str:
    """Point MLflow at the store and experiment (created on first use: a SQLite store under a lock
    beside it, so that processes starting together do not race to make its tables), and end the
    runs that a killed process left RUNNING. Returns the store's URI."""
    uri = store_uri(str(cfg.uri))
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    path = sqlite_path(uri)
    try:
        if path is not None:
            check_sqlite_file(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(uri):
            if path is not None and path.is_file():
                check_writable(path)
            mlflow.set_tracking_uri(uri)
            _create_experiment(cfg)
    except UserError:
        raise
    except Exception as error:  # sqlite, alembic and OS errors alike: the store is not usable
        refused = refusal(error, cfg.experiment)
        if refused:
            raise UserError(refused) from error
        raise UserError(f"cannot open the MLflow store {uri} ({_reason(error)}): {_fix(error)}") from error
    lifecycle.end_orphaned_runs()
    return uri


def open_for_reading(uri: str) -> str:
    """Point MLflow at an existing store, for commands that only read it (report, predict): a
    missing SQLite file is an error, not a new empty store. Returns the store's URI."""
    uri = store_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not check_sqlite_file(path):  # no file, or one without tables
        raise UserError(f"no MLflow store at {path}: pass --tracking-uri of the store the runs "
                        "logged to (each run prints it after `mlflow ui --backend-store-uri`)")
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        with refusals():  # credentials are checked now, not at the first read
            mlflow.search_experiments(max_results=1)
    return uri


def experiment_id(name: str) -> str:
    """The id of the experiment `name` in the current store."""
    return mlflow.get_experiment_by_name(name).experiment_id


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store, as printed after each run."""
    return f"mlflow ui --backend-store-uri {uri}"


def ui_page(experiment_id: str, run_id: str = "") -> str:
    """The experiment's runs table (or one run's page) in that UI. MLflow 3.17's UI keeps a global
    GenAI / Model training switch that starts on GenAI and then shows the experiment's GenAI pages
    whatever its kind tag says (seen in a browser); `workflowType=machine_learning` in the address
    selects Model training, on a run's page too."""
    runs = f"runs/{run_id}" if run_id else "runs"
    return f"http://127.0.0.1:5000/#/experiments/{experiment_id}/{runs}?workflowType=machine_learning"
