"""`python -m pneumo_exp [overrides]`: the overrides are checked, then Hydra composes the experiment
and run.py runs it.

The check comes before Hydra because Hydra prints five lines for a misspelled key (and suggests
`+KEY=VALUE`, which only adds a key nothing reads), and in a multirun would start jobs before a
later job's bad value shows. A key, a choice or (in a multirun) a value that cannot work is one line,
`error: ...`, with exit code 2, before any job starts.

How often a command composes its config: a run twice, here (keys and choices) and in Hydra, which
composes its own (hydra.main takes no composed config). A multirun here once as Hydra composes it
(its sweeper's params, which a `+sweeps=` preset sets, are known only then) and once per distinct
job, checked as run.py checks it; then in Hydra, once and once per job as it starts. Nothing else
composes it: the sweep's callback (tracking/multirun.py) checks nothing, this is the only check.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import (
    UserError,
    config,
    data,
    disk_full,
    exit_code_of_signal,
    file_in_the_way,
    one_line_errors,
    one_of,
    unknown_key,
)
from pneumo_exp.config import CONF, GROUPS
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
        except Exception as error:
            full = disk_full(error)
            if full:  # every later job would fail alike: the sweep stops too
                raise UserError(f"the disk is full where the run writes ({full}): free space, "
                                "or point tracking.uri, tracking.artifact_location or tracking.backup_dir at "
                                "another disk; what the run logged stays logged") from error
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
            traceback.print_exc()
            return None


class Flags(argparse.ArgumentParser):
    """Hydra's own flags, read as Hydra reads them, so that the overrides are told from the flags'
    values. A command line this cannot read is left to Hydra, which says what is wrong with it."""

    def __init__(self) -> None:
        super().__init__(add_help=False)
        self.add_argument("overrides", nargs="*")
        for flag in ("-h/--help", "--hydra-help", "--version", "--resolve", "-r/--run", "-m/--multirun",
                     "-sc/--shell-completion"):
            self.add_argument(*flag.split("/"), action="store_true")
        for flag in ("-c/--cfg", "-p/--package", "-cp/--config-path", "-cn/--config-name",
                     "-cd/--config-dir", "--experimental-rerun"):
            self.add_argument(*flag.split("/"))
        self.add_argument("-i", "--info", nargs="?", const="all")

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def check(argv: list[str]) -> None:
    """Compose what Hydra will run from these arguments; a failure becomes a UserError of one line.
    A multirun's jobs are checked in full (check_jobs); otherwise the keys and choices (variants),
    and run.py checks the values as the run starts. Help, info and the like compose nothing."""
    try:
        flags = Flags().parse_args(argv)
    except ValueError:
        return
    if flags.help or flags.hydra_help or flags.version or flags.info or flags.shell_completion \
            or flags.experimental_rerun:
        return
    name, overrides = flags.config_name or "config", list(flags.overrides)
    multirun = flags.multirun or (not flags.run and "hydra.mode=MULTIRUN" in overrides)
    if flags.config_dir:  # a user's own choices (docs/extending.md): searched here as Hydra searches them
        overrides.append(f"hydra.searchpath=[file://{CONF.parent},file://{Path(flags.config_dir).resolve()}]")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"), composition_errors():
        if multirun and not flags.cfg:
            check_jobs(name, overrides)
        else:
            for i, variant in enumerate(variants(OverridesParser.create().parse_overrides(overrides))):
                cfg = compose(name, overrides=variant, return_hydra_config=not i)
                if not i and not flags.cfg:
                    check_output_folder(cfg.hydra, "run")


def check_output_folder(hydra_cfg: DictConfig, mode: str) -> None:
    """Hydra makes the run's (sweep's) output folder as it starts: a file in its way would end the
    command in a traceback. (Its path may hold `${now:...}`: the part before is what can be checked.)"""
    folder = OmegaConf.to_container(hydra_cfg[mode], resolve=False)["dir"]
    blocked = file_in_the_way(Path(folder.split("${")[0] or "."))
    if blocked is not None:
        raise UserError(f"hydra.{mode}.dir={folder} is invalid: {blocked} is a file, where the output folder "
                        f"would go: move the file, or pass hydra.{mode}.dir=A_FOLDER")


def check_jobs(name: str, overrides: list[str]) -> None:
    """Compose the multirun's config as Hydra will, then each distinct job once, and check each job
    as run.py will (config.check, data.check): a bad value in the last job stops the sweep before
    the first starts. A search's ranges (`interval(...)`) keep their defaults here: the sweeper asks
    for their values only as it runs (sweep.job_overrides)."""
    from pneumo_exp.tracking import sweep  # MLflow, seconds to import: only for a multirun

    loader = GlobalHydra.instance().config_loader()
    primary = loader.load_configuration(name, overrides, run_mode=RunMode.MULTIRUN)
    check_output_folder(primary.hydra, "sweep")
    hydra_overrides = list(primary.hydra.overrides.hydra)  # hydra.searchpath (-cd) among them
    for job in distinct(sweep.job_overrides(primary)):
        cfg = compose(name, overrides=[*hydra_overrides, *job])
        config.check(cfg)
        data.check(cfg.data, cfg.eval.labelled)


def distinct(jobs: list[list[str]]) -> list[list[str]]:
    """Each job once: a key both the sweeper's params and the command line set keeps the command
    line's value (the last, as Hydra's sweeper keeps it), so jobs that differ only there are one."""
    kept = {tuple({line.split("=", 1)[0]: line for line in job}.values()): None for job in jobs}
    return [list(job) for job in kept]


def variants(parsed: list[Override]) -> list[list[str]]:
    """The overrides once per choice of each swept config group (`imbalance=none,focal`), any other
    sweep at its first value: every group choice is tried, values only once. A sweep with no values
    to list (an Optuna `interval(...)`) is left to the sweeper."""
    listed = [(o, swept_values(o)) for o in parsed]
    listed = [(o, values) for o, values in listed if values]
    plain = [values[0] for _, values in listed]
    tried = [plain]
    for i, (o, values) in enumerate(listed):
        if o.key_or_group in (*GROUPS, "experiment", "sweeps"):
            tried += [[*plain[:i], value, *plain[i + 1:]] for value in values[1:]]
    return tried


def swept_values(o: Override) -> list[str]:
    """`imbalance=none,focal` -> ["imbalance=none", "imbalance=focal"]; an override that sweeps
    nothing -> itself; a sweep that cannot be listed -> []."""
    if not o.is_sweep_override():
        return [o.input_line]
    try:
        return [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
    except HydraException:
        return []


@contextlib.contextmanager
def composition_errors() -> Iterator[None]:
    """Hydra's errors for an override that names no choice, no key or cannot be read, as one line."""
    try:
        yield
    except MissingConfigException as error:
        raise UserError(missing_choice(error)) from None
    except ConfigCompositionException as error:
        raise UserError(not_composed(error)) from None
    except OverrideParseException as error:
        raise UserError(f"cannot read the overrides: {first_line(error)}") from None


def missing_choice(error: MissingConfigException) -> str:
    """`imbalance=smote is not a choice: use class_weight, focal, none, oversample or undersample`."""
    group, _, name = (error.missing_cfg_file or "").rpartition("/")
    options = sorted(error.options or [])
    if not group:
        return first_line(error)
    return f"{group}={name} is not a choice: {one_of(options) if options else 'see conf/ for the choices'}"


def not_composed(error: ConfigCompositionException) -> str:
    """An override of a key no YAML defines, in the words config.check uses; a list or dict where
    the YAML has the other (`model.widths={a:1}`), naming the kind to use; else Hydra's first line."""
    found = re.search(r"Could not override '([^']+)'", str(error))
    if found and "not in struct" in f"{error} {error.__cause__}":
        return unknown_key(found[1])
    merged = re.match(r"Error merging override (([^=]+)=.*)", str(error))
    kinds = re.match(r"Cannot merge (\w+)Config with (\w+)Config", str(error.__cause__))
    if merged and kinds:
        return (f"{merged[1]} is invalid: {merged[2]} is a {kinds[2].lower()} in conf/, not a "
                f"{kinds[1].lower()}: use a {kinds[2].lower()} (`--cfg job` prints every key's value)")
    return first_line(error)


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


HOME_VALUE = re.compile(r"""^([^=\s'"]+=)([^'",()\[\]{}\s]*~[^'",()\[\]{}\s]*)$""")


def home_quoted(argv: list[str]) -> list[str]:
    """`KEY=~/data`, as bash passes it (it expands no ~ after the = of an argument), quoted for
    Hydra, whose grammar has no ~: `KEY='~/data'`. The key's own code expands the ~ (data.root,
    data.cache_dir, tracking.uri, ...). A value Hydra would read as a sweep or a list is left as it is."""
    return [HOME_VALUE.sub(r"\1'\2'", arg) for arg in argv]


if __name__ == "__main__":
    sys.argv[1:] = home_quoted(sys.argv[1:])
    with one_line_errors():
        check(sys.argv[1:])  # a misspelled key or choice, a bad value in a sweep: one line, before Hydra
    with exit_code_of_signal():
        main()
