"""`python -m pneumo_exp [overrides]`: Hydra composes the experiment, run.py runs it."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pneumo_exp import one_line_errors
from pneumo_exp.run import RunResult, run_experiment


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> RunResult:
    """A UserError (bad config or data) ends the process with one line on stderr and exit code 2."""
    with one_line_errors():
        return run_experiment(cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    main()
