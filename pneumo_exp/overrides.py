"""The command line's overrides, checked before Hydra runs them: a key or a choice that does not exist
is one line naming it and the fix. (Hydra prints five lines for a misspelled key and suggests
`+KEY=VALUE`, which only adds a key nothing reads.)"""

import re

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)

from pneumo_exp import UserError
from pneumo_exp.config import CONF, GROUPS, one_of, unknown_key


def check(argv: list[str]) -> None:
    """Compose the config as each job will be composed (every choice of a group sweep, the first
    value of any other sweep); a failure becomes a UserError of one line."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            for overrides in variants(parsed):
                compose(args.config_name or "config", overrides=overrides)
    except MissingConfigException as error:
        raise UserError(missing_choice(error)) from None
    except ConfigCompositionException as error:
        raise UserError(not_composed(error)) from None
    except OverrideParseException as error:
        raise UserError(f"cannot read the overrides: {first_line(error)}") from None


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


def missing_choice(error: MissingConfigException) -> str:
    """`imbalance=smote is not a choice: use class_weight, focal, none, oversample or undersample`."""
    group, _, name = (error.missing_cfg_file or "").rpartition("/")
    options = sorted(error.options or [])
    if not group:
        return first_line(error)
    return f"{group}={name} is not a choice: {one_of(options) if options else 'see conf/ for the choices'}"


def not_composed(error: ConfigCompositionException) -> str:
    """An override of a key no YAML defines, in the words check_keys uses; else Hydra's first line."""
    found = re.search(r"Could not override '([^']+)'", str(error))
    if found and "not in struct" in f"{error} {error.__cause__}":
        return unknown_key(found[1])
    return first_line(error)


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
