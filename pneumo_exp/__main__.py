"""`python -m pneumo_exp [overrides]`: Hydra composes the experiment, run.py runs it."""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pneumo_exp import UserError, exit_code_of_signal, one_line_errors, overrides
from pneumo_exp.run import run_experiment

if TYPE_CHECKING:
    from pneumo_exp.tracking.jobs import RunResult


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> RunResult | None:
    """A UserError (bad config or data) ends the process with one line on stderr and exit code 2.
    In a multirun any other error ends only its job (its run FAILED, the traceback printed), so
    the other jobs still run and the sweep still reports; the sweep then exits with code 1."""
    with one_line_errors():
        try:
            return run_experiment(cfg, HydraConfig.get().overrides.task)
        except UserError:
            raise
        except Exception:
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
            traceback.print_exc()
            return None


if __name__ == "__main__":
    with one_line_errors():
        overrides.check(sys.argv[1:])  # a misspelled key or choice: one line, before Hydra
    with exit_code_of_signal():
        main()
