"""A sweep (a multirun) in the store: its identity, its parent run, and which runs belong to it.

The sweep id is a hash of the sweep's definition (command-line overrides and sweeper params), so
the same command finds the same parent and its jobs skip what already FINISHED: an interrupted
sweep resumes. The launching process names the sweep to its jobs through SWEEP_ENV.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import mlflow
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from pneumo_exp import UserError, config, redact
from pneumo_exp.tracking import lifecycle, record, store

SWEEP_ENV = "PNEUMO_EXP_SWEEP"  # "SWEEP_ID PARENT_RUN_ID", set for the jobs of a multirun


@dataclass(frozen=True)
class Sweep:
    id: str
    parent_run_id: str


def current() -> Sweep | None:
    """The sweep this process runs a job of, if any."""
    value = os.environ.get(SWEEP_ENV)
    if not value:
        return None
    sweep_id, parent_run_id = value.split()
    return Sweep(sweep_id, parent_run_id)


def announce(sweep: Sweep | None) -> None:
    """Tell the jobs started from now on which sweep they belong to (None: to none)."""
    if sweep is None:
        os.environ.pop(SWEEP_ENV, None)
    else:
        os.environ[SWEEP_ENV] = f"{sweep.id} {sweep.parent_run_id}"


def definition(cfg: DictConfig) -> dict[str, Any]:
    """What the sweep computes: its overrides (less those of config.HOW_IT_RUNS, so that adding
    launcher=, train.resume=true or tracking.rerun=true finds the same sweep) and sweeper params."""
    params = cfg.hydra.sweeper.get("params")
    overrides = [o for o in cfg.hydra.overrides.task
                 if config.changes_results(o.lstrip("+~").split("=", 1)[0])]
    return {"overrides": sorted(overrides),
            "params": OmegaConf.to_container(params, resolve=True) if params else {}}


def job_overrides(cfg: DictConfig) -> list[list[str]]:
    """The overrides of each job, as the basic sweeper makes them: its params, then the command
    line's, every combination of their values. A search's ranges (not a list of values) keep their
    defaults here: a search asks for its values only as it runs."""
    params = cfg.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(cfg.hydra.overrides.task)
    choices = []
    hydra = GlobalHydra.instance()  # its config loader lists a group's choices for glob(*)
    parser = OverridesParser.create(config_loader=hydra.config_loader() if hydra.is_initialized() else None)
    for override in parser.parse_overrides(lines):
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif override.is_discrete_sweep():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    return [list(job) for job in itertools.product(*choices)]


def sweep_id(experiment: str, definition: dict[str, Any], version: int = config.CONFIG_VERSION) -> str:
    """The same experiment, definition and config version give the same id (version 1's ids were
    made without it)."""
    blob = json.dumps([experiment, definition, *([version] if version > 1 else [])], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def earlier_version_note(experiment: str, definition: dict[str, Any]) -> str | None:
    """A line for a sweep of the same definition made under an earlier config version: its runs'
    config hashes are of another version, so none is reused, and this sweep starts beside it."""
    for version in range(config.CONFIG_VERSION - 1, 0, -1):
        earlier = sweep_id(experiment, definition, version)
        if find_parent(experiment, earlier) is not None:
            return (f"note: sweep {earlier} of this command was made by an earlier pneumo_exp (config "
                    f"version {version}); its runs are kept but not reused: this starts a new sweep "
                    "(docs/tracking.md)")
    return None


def name(definition: dict[str, Any]) -> str:
    """`ablation` for `+sweeps=ablation`, else `multirun`."""
    presets = [o.split("=", 1)[1] for o in definition["overrides"] if o.startswith("+sweeps=")]
    return presets[0] if presets else "multirun"


def find_parent(experiment: str, sweep_id: str) -> mlflow.entities.Run | None:
    """The sweep's parent run, if an earlier attempt of the same sweep made it."""
    found = mlflow.search_runs(
        experiment_names=[experiment], output_format="list", max_results=1,
        filter_string=f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'parent'")
    return found[0] if found else None


def open_parent(experiment: str, sweep_id: str, definition: dict[str, Any]) -> Sweep:
    """The sweep's parent run (reopened when the same sweep runs again; one parent per sweep, even
    when the same command starts twice at once)."""
    with store.exclusive():
        return _open_parent(experiment, sweep_id, definition)


def _open_parent(experiment: str, sweep_id: str, definition: dict[str, Any]) -> Sweep:
    client = mlflow.MlflowClient()
    found = find_parent(experiment, sweep_id)
    if found and found.info.status == "RUNNING":  # alive: open_experiment ended those gone from here
        raise UserError(f"sweep {sweep_id} is already running (parent run {found.info.run_id}, process "
                        f"{found.data.tags.get('pid')} on {found.data.tags.get('host')}): wait for it to "
                        "end; the same command then runs only what did not finish")
    if found:
        run_id = found.info.run_id
        client.update_run(run_id, status="RUNNING")
        lifecycle.keep_recovered_error(found)
        for key, value in lifecycle.process_tags().items():
            client.set_tag(run_id, key, value)
        return Sweep(sweep_id, run_id)
    note = earlier_version_note(experiment, definition)
    if note:
        print(note)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    git = record.git_tags()
    source = {"mlflow.source.name": sys.argv[0], "mlflow.source.type": "LOCAL",  # as its runs have them
              **({"mlflow.source.git.commit": git["git_commit"]} if git["git_commit"] != "unknown" else {})}
    run = client.create_run(experiment_id, run_name=f"sweep-{name(definition)}-{sweep_id}", tags={
        "sweep_id": sweep_id, "sweep_role": "parent", "sweep_name": name(definition),
        "sweep_overrides": redact(" ".join(definition["overrides"])), **git, **source,
        **lifecycle.process_tags()})
    client.log_text(run.info.run_id, redact(json.dumps(definition, indent=2, sort_keys=True)), "sweep.json")
    return Sweep(sweep_id, run.info.run_id)


def jobs(sweep_id: str) -> list[mlflow.entities.Run]:
    """Every child run of the sweep, in any state."""
    return mlflow.search_runs(filter_string=f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'child'",
                              output_format="list")


def finished_run(sweep_id: str, config_hash: str) -> mlflow.entities.Run | None:
    """A FINISHED run of this sweep with this exact config, if there is one."""
    runs = mlflow.search_runs(
        filter_string=f"tags.sweep_id = '{sweep_id}' and tags.config_hash = '{config_hash}' "
                      "and attributes.status = 'FINISHED'",
        output_format="list", max_results=1)
    return runs[0] if runs else None


def is_running(run_id: str) -> bool:
    """Whether `run_id` names a run of the store that is RUNNING (False for any other name)."""
    try:
        return mlflow.get_run(run_id).info.status == "RUNNING"
    except mlflow.exceptions.MlflowException:
        return False


def interrupted_run(config_hash: str, sweep: Sweep | None) -> mlflow.entities.Run | None:
    """The newest run of this config (in this sweep, if any), if it was KILLED or FAILED: what
    train.resume continues."""
    query = f"tags.config_hash = '{config_hash}'"
    if sweep is not None:
        query += f" and tags.sweep_id = '{sweep.id}'"
    runs = mlflow.search_runs(filter_string=query, order_by=["attributes.start_time DESC"],
                              output_format="list", max_results=1)
    return runs[0] if runs and runs[0].info.status in ("KILLED", "FAILED") else None
