"""The launchers of launcher=parallel and launcher=slurm: Hydra's submitit launchers, with two
changes a sweep needs.

- A job that ends without a result (cancelled with scancel, killed for memory, its node lost) is one
  line, not a traceback that ends the sweep: what every job did is counted from MLflow at the
  sweep's end (multirun.py), which exits 1 naming how many runs did not finish, and the same
  command again runs only those.
- On a SLURM cluster without accounting (no slurmdbd: a single node, a lab's own), submitit's sacct
  polls fail and warn on every poll; there job states come from squeue instead, said in one line.
"""

from __future__ import annotations

import contextlib
import getpass
import re
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from submitit.core.core import Job
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

LEFT_THE_QUEUE = "LEFT_THE_QUEUE"  # a job squeue no longer lists: done, with or without a result


@contextlib.contextmanager
def tolerant() -> Iterator[None]:
    """Inside: a job that ended without a result is one line and an empty result, not submitit's
    exception (submitit.Job.results, which Hydra's launcher calls for each job, wrapped)."""
    results = Job.results

    def results_or_line(job: Job) -> list[JobReturn]:
        try:
            return results(job)
        except (UncompletedJobError, FailedJobError) as error:
            found = re.search(r"state: ([A-Z_]+)", str(error))
            why = [f"state {found[1]}" if found else type(error).__name__]
            why += [line for line in (job.stderr() or "").splitlines() if line.startswith("error: ")][-1:]
            print(f"warning: sweep job {job.job_id} ended without a result ({'; '.join(why)}); its run is "
                  "counted at the sweep's end, and the same command again runs it")
            return [JobReturn(status=JobStatus.COMPLETED)]

    Job.results = results_or_line
    try:
        yield
    finally:
        Job.results = results


def accounting_off() -> bool:
    """Whether the cluster keeps no job accounting (AccountingStorageType=accounting_storage/none)."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    found = re.search(r"^AccountingStorageType\s*=\s*(\S+)", config.stdout, re.M)
    return found is not None and found[1] == "accounting_storage/none"


class SqueueWatcher(SlurmInfoWatcher):
    """Job states from squeue (this user's jobs, array tasks one per line); a job squeue no longer
    lists has left the queue, and submitit then reads its result file, or finds none."""

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        listed = super().read_info("JobID|State|NodeList\n" + text)
        gone = {job: {"JobID": job, "State": LEFT_THE_QUEUE, "NodeList": ""}
                for job in self._registered - self._finished - set(listed)}
        return listed | gone


@contextlib.contextmanager
def squeue_states() -> Iterator[None]:
    """Inside, where the cluster keeps no accounting: SLURM job states from squeue, said once."""
    if not accounting_off():
        yield
        return
    print("note: this SLURM cluster keeps no accounting (sacct), so job states come from squeue")
    watcher = SlurmJob.watcher
    SlurmJob.watcher = SqueueWatcher(delay_s=60)  # squeue is cheap: poll at least every minute
    try:
        yield
    finally:
        SlurmJob.watcher = watcher


def launched(launch: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
             slurm: bool) -> Sequence[JobReturn]:
    """`launch` (a submitit launcher's own) with the two changes above."""
    with tolerant(), (squeue_states() if slurm else contextlib.nullcontext()):
        return launch(job_overrides, initial_job_idx)
