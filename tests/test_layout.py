"""The shape of the code: imports run one way down the path of a run, and --help names every choice."""

import ast
import subprocess
import sys

import pytest

from tests.helpers import PROJECT, cli

# The path of a run, bottom to top, one folder a layer: a module imports only from its own layer or
# those below. The top level holds the entry points and what the whole config is.
LAYERS = [
    {"__init__", "config"},
    {"data"},  # only data/pipeline.py loads TensorFlow (tests/test_data_boundary.py)
    {"models"},  # networks, imbalance methods, augmentation, training
    {"evaluation"},  # threshold, scoring, adaptation and its checks, a site's labelled sample
    {"tracking"},  # MLflow: the store, a run's lifecycle and logging, jobs, sweeps
    {"report"},
    {"run", "predict", "__main__"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}
SOURCES = sorted((PROJECT / "pneumo_exp").rglob("*.py"))


def module_name(path) -> str:
    """pneumo_exp/run.py -> run; pneumo_exp/data/folder.py -> data (a folder is one layer)."""
    return path.relative_to(PROJECT / "pneumo_exp").with_suffix("").parts[0]


def imported_modules(path) -> set[str]:
    """Our modules that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pneumo_exp"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from pneumo_exp import data, UserError: modules, or names of __init__
                found |= {a.name if a.name in LAYER else "__init__" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pneumo_exp.")}
    return found


def test_every_module_has_a_layer():
    assert {module_name(path) for path in SOURCES} == set(LAYER)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_imports_run_down_the_path_of_a_run(path):
    importer = module_name(path)
    upward = sorted(m for m in imported_modules(path) - {importer} if LAYER[m] > LAYER[importer])
    assert not upward, f"{importer} (layer {LAYER[importer]}) imports from above: {upward}"


def test_help_lists_every_group_with_its_choices_and_every_sweep_preset(tmp_path):
    result = cli("--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    for group in sorted(p for p in (PROJECT / "conf").iterdir() if p.is_dir() and p.name != "hydra"):
        choices = ", ".join(sorted(f.stem for f in group.glob("*.yaml")))
        assert f"{group.name}: {choices}" in result.stdout
    (line,) = [line for line in result.stdout.splitlines() if "+sweeps=NAME a sweep preset:" in line]
    named = set(line.split("preset:")[1].strip(" .").split(", "))
    assert named == {f.stem for f in (PROJECT / "sweeps").glob("*.yaml")}


def test_every_package_is_installed_by_a_regular_install():
    """pyproject lists packages by hand: a new sub-package left out works in the editable install
    the tests use, and is missing from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(PROJECT).parts)
             for init in (PROJECT / "pneumo_exp").rglob("__init__.py")}
    assert found <= listed


def test_what_hydra_imports_for_every_command_imports_no_mlflow():
    """Hydra imports hydra_plugins/ and makes the sweep callback for every command, a config error's
    too: MLflow (1-2 s) is imported only once a multirun or a search starts."""
    code = ("import sys, hydra_plugins.pneumo_exp_search, hydra_plugins.pneumo_exp_launchers, "
            "pneumo_exp.tracking.multirun; "
            "print(sorted(m for m in ('mlflow', 'tensorflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
