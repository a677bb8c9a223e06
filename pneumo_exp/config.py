"""The whole config: its groups, the schema that types each choice (read and checked well under a
second, before TensorFlow is imported), and what makes two configs the same run (a hash of every
key that changes results). How a schema and a plug-in are written: docs/extending.md."""

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import DictConfig, OmegaConf

from pneumo_exp import UserError, find, invalid, is_seed, of_type, type_fix, unknown_key

CONF = Path(__file__).resolve().parents[1] / "conf"
# In the order they are checked: train's thread counts are resolved from launcher.jobs.
GROUPS = ("launcher", "tracking", "data", "model", "regularization", "imbalance", "augment", "train", "eval")
# A plug-in group's choice names its function by `_target_`; the function's first parameter,
# annotated with a dataclass, is the choice's schema, and these are the parameters after it.
PLUGINS = {"model": ("regularization", "input_shape"), "imbalance": ("labels",), "augment": ("seed",)}
# The schema of the other groups' choices (data: one per choice).
SCHEMAS = {"data": {"chest_xray": "pneumo_exp.data.folder.ChestXray",
                    "pneumoniamnist": "pneumo_exp.data.npz.PneumoniaMNIST"},
           "regularization": "pneumo_exp.models.settings.Regularization",
           "train": "pneumo_exp.models.settings.Train", "eval": "pneumo_exp.evaluation.settings.Eval",
           "tracking": "pneumo_exp.tracking.settings.Tracking",
           "launcher": "pneumo_exp.tracking.settings.Launcher"}

# What config_hash hashes: 2 since choices name their function (`_target_`), 3 since eval.labelled_head.
# A sweep's id includes it:
# an earlier version's sweep is never resumed into, its runs never mixed with new ones (docs/tracking.md).
CONFIG_VERSION = 3

# Keys that say where a run is logged, how it runs, whether it continues, where decoded images are
# kept: they change nothing it computes, so config_hash, sweep ids and report cells leave them out.
HOW_IT_RUNS = ("tracking", "launcher", "train.resume", "train.intra_op_threads",
               "train.inter_op_threads", "train.run_eagerly", "data.cache_dir")


def changes_results(key: str) -> bool:
    """False for a dotted config key (`launcher.jobs`, `tracking`) under HOW_IT_RUNS."""
    return not any(key == k or key.startswith(f"{k}.") for k in HOW_IT_RUNS)


def config_hash(cfg: DictConfig, *leave_out: str) -> str:
    """Stable hash of the resolved config without HOW_IT_RUNS and the top-level keys in leave_out:
    equal for two configs that compute the same run."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in (*HOW_IT_RUNS, *leave_out):
        *parents, last = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def check(cfg: DictConfig) -> dict[str, Any]:
    """Every group's settings (settings()), then what each choice needs of the others (its schema's
    `check_with`); the first problem is a UserError of one line."""
    if unknown := sorted(set(cfg) - {*GROUPS, "seed"}):
        raise UserError(unknown_key(unknown[0]))
    if not is_seed(cfg.seed):
        raise invalid("seed", cfg.seed, "use an integer from 0 to 2**32 - 1")
    found = {group: settings(group, cfg[group]) for group in GROUPS}
    for group in GROUPS:
        if hasattr(found[group], "check_with"):
            found[group].check_with(cfg, found)
    return found


def settings(group: str, node: DictConfig) -> Any:
    """The group's choice as an instance of its schema (what a plug-in's function is given): each
    key known, of its type and passing its rule (pneumo_exp.rule), then the schema's own checks."""
    schema = plugin(group, node)[1] if group in PLUGINS else find(schema_path(group, node.name), node.name,
                                                                  f"{group}.name")
    values = OmegaConf.to_container(node, resolve=True)
    values = {key: value for key, value in values.items() if key not in ("name", "_target_")}
    hints, known = get_type_hints(schema), {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in known.keys() - values.keys():
        if known[key].default is known[key].default_factory is dataclasses.MISSING:
            raise UserError(f"{group}.{key} is missing: set it in conf/{group}/{node.name}.yaml")
    for key, value in values.items():
        if key not in known:
            raise UserError(unknown_key(f"{group}.{key}"))
        ok, fix = known[key].metadata.get("ok"), known[key].metadata.get("fix") or type_fix(hints[key])
        if not of_type(value, hints[key]) or (ok is not None and not ok(value)):
            raise invalid(f"{group}.{key}", value, fix)
    try:
        return schema(**values)
    except (TypeError, ValueError) as error:  # a user schema's own check
        raise UserError(f"{group}={node.name} is invalid: {error}") from error


def schema_path(group: str, name: str) -> str | None:
    """The dotted path of a group's schema (data: of its choice `name`)."""
    path = SCHEMAS[group]
    return path.get(name) if isinstance(path, dict) else path


def plugin(group: str, node: DictConfig) -> tuple[Callable, type]:
    """The function a choice's `_target_` names, and its schema: the dataclass its first parameter
    is annotated with. A wrong path or signature is a one-line error naming it."""
    key, target, wanted = f"{group}._target_", node.get("_target_"), ("settings", *PLUGINS[group])
    function = find(target, target, key)
    parameters = list(inspect.signature(function).parameters.values())
    if len(parameters) != len(wanted):
        raise invalid(key, target, f"its parameters must be ({', '.join(wanted)}): docs/extending.md")
    schema = parameters[0].annotation
    if isinstance(schema, str):  # postponed annotations (from __future__ import annotations)
        schema = function.__globals__.get(schema)
    if not (inspect.isclass(schema) and dataclasses.is_dataclass(schema)):
        raise invalid(key, target, "annotate its first parameter with the dataclass of its settings "
                                   "(docs/extending.md)")
    return function, schema


