"""Hydra instantiates launchers only from classes defined in the hydra_plugins package: these name
ours (pneumo_exp/tracking/launching.py), Hydra's submitit launchers with a sweep's two changes."""

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from pneumo_exp.tracking import launching


class LocalLauncher(submitit_launcher.LocalLauncher):
    """launcher=parallel: a job without a result is one line, not the sweep's end."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launching.launched(super().launch, job_overrides, initial_job_idx, slurm=False)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """launcher=slurm: the same, and job states from squeue where the cluster keeps no accounting."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launching.launched(super().launch, job_overrides, initial_job_idx, slurm=True)
