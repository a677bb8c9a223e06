"""`python -m pneumo_exp [overrides]`: Hydra composes the experiment, run.py runs it."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pneumo_exp import UserError
from pneumo_exp.run import RunResult, run_experiment


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> RunResult:
    """A UserError (bad config or data) ends the process with one line on stderr and exit code 2."""
    try:
        return run_experiment(cfg, HydraConfig.get().overrides.task)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
