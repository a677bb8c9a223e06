"""A run always ends: FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED on an error; and a run whose
process died (SIGKILL, power loss) is closed by the next process that opens the store."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator

import mlflow

from pneumo_exp import redact


def process_tags() -> dict[str, str]:
    """Where a run's process lives, so a later process can tell when it died (SIGKILL, power)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_orphaned_runs() -> None:
    """Mark KILLED every RUNNING run of this experiment whose process on this host is gone."""
    host = socket.gethostname()
    for run in mlflow.search_runs(filter_string="attributes.status = 'RUNNING'", output_format="list"):
        pid = run.data.tags.get("pid", "")
        if run.data.tags.get("host") == host and pid.isdigit() and not _alive(int(pid)):
            client = mlflow.MlflowClient()
            client.set_tag(run.info.run_id, "error", f"process {pid} ended without closing the run")
            client.set_terminated(run.info.run_id, "KILLED")


_signals: list[str] = []  # SIGINT/SIGTERM received during the current run


def _raise_interrupt(signum: int, frame: object) -> None:
    _signals.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_signals[-1])


def raise_on_signals() -> dict[int, object]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (so `finally` and atexit still run) and are
    remembered; returns the handlers replaced. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def was_interrupted() -> bool:
    """Whether SIGINT or SIGTERM arrived since the current (or last) run started."""
    return bool(_signals)


def check_interrupt() -> None:
    """Python can swallow a handler's KeyboardInterrupt (one raised inside a weakref callback or
    a TensorFlow iterator): re-raise it at the next epoch end and when the run closes."""
    if _signals:
        raise KeyboardInterrupt(_signals[-1])


@contextlib.contextmanager
def run(name: str, tags: dict[str, str], parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run (a new one, or `resume_run_id` reopened) that always ends: FINISHED; KILLED on
    Ctrl-C or SIGTERM; FAILED on any error, with the error tagged. Whatever was logged before the end
    stays logged."""
    previous = raise_on_signals()
    _signals.clear()
    tags = {**tags, **process_tags()}
    try:
        with mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else name, tags=tags,
                              parent_run_id=None if resume_run_id else parent_run_id) as active:
            if resume_run_id is not None:
                keep_recovered_error(active)
            try:
                yield active
                check_interrupt()
            except KeyboardInterrupt:
                mlflow.end_run("KILLED")
                raise
            except Exception as error:
                with contextlib.suppress(Exception):
                    mlflow.set_tag("error", redact(f"{type(error).__name__}: {error}")[:5000])
                raise  # start_run's own exit marks the run FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def keep_recovered_error(run: mlflow.entities.Run) -> None:
    """`error` marks a failed run: a resumed one (a run, or a sweep's parent run) keeps it as
    `resumed_after_error`, so that a run that then finishes carries no `error`."""
    failure = run.data.tags.get("error")
    if failure:
        client = mlflow.MlflowClient()
        client.set_tag(run.info.run_id, "resumed_after_error", failure)
        client.delete_tag(run.info.run_id, "error")
