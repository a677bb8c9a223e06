"""docs/extending.md's example, run exactly as written: a user's network and imbalance method in
their own package, their choices in their own config folder, a 2x2 sweep through them."""

import re
import sys

import pytest
from omegaconf import OmegaConf

from pneumo_exp import UserError, config
from tests.helpers import PROJECT, QUIET, by_role, cli, make_config, runs_in, store_overrides


def write_example(folder) -> None:
    """Each code block of docs/extending.md whose first line is `# PATH`, written to folder/PATH."""
    text = (PROJECT / "docs" / "extending.md").read_text()
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", text, flags=re.S):
        first, _, body = block.partition("\n")
        path = folder / first.removeprefix("# ").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)


@pytest.fixture
def example(tmp_path, monkeypatch):
    write_example(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("mylab", "mylab.nets", "mylab.balance"):
        sys.modules.pop(name, None)


@pytest.mark.long
def test_the_documented_example_runs_a_sweep_named_after_its_choices(example, tiny_npz):
    path, md5 = tiny_npz
    result = cli("-m", "-cd", str(example / "mylab_conf"), "model=tinynet,seed_cnn",
                 "imbalance=softened,none",
                 f"data.path={path}", f"data.md5={md5}", *QUIET, *store_overrides(example),
                 f"hydra.sweep.dir={example}/sweep", cwd=example, env={"PYTHONPATH": str(example)})
    assert result.returncode == 0, result.stderr[-3000:]
    parents, children = by_role(runs_in(f"sqlite:///{example}/mlflow.db"))
    assert len(parents) == 1 and {run.info.status for run in children} == {"FINISHED"} and len(children) == 4
    mine = [run for run in children if run.data.tags["model"] == "tinynet"]
    assert len(mine) == 2 and {run.data.params["model._target_"] for run in mine} == {"mylab.nets.build"}
    assert {run.data.params["model.width"] for run in mine} == {"8"}
    softened = [run for run in children if run.data.tags["imbalance"] == "softened"]
    assert {run.data.params["imbalance.power"] for run in softened} == {"0.5"}
    report = (example / "sweep" / "report" / "report.md").read_text()
    for cell in ("model=tinynet imbalance=softened", "model=seed_cnn imbalance=none"):
        assert f"| {cell} | 1 |" in report


def users_choice(model: dict) -> OmegaConf:
    cfg = make_config([])
    cfg.model = OmegaConf.create(model)
    return cfg


@pytest.mark.parametrize("model, message", [
    ({"name": "tinynet", "_target_": "mylab.nets.build", "width": 0},
     "model.width=0 is invalid: use an integer >= 1"),
    ({"name": "tinynet", "_target_": "mylab.nets.build", "width": 8, "depth": 2},
     "unknown config key model.depth"),
    ({"name": "tinynet", "_target_": "mylab.nets.buld", "width": 8},
     "model._target_='mylab.nets.buld' is invalid: mylab.nets has no function or class buld"),
    ({"name": "tinynet", "_target_": "mylab.nots.build", "width": 8},
     "model._target_='mylab.nots.build' is invalid: cannot import mylab.nots"),
    ({"name": "tinynet", "_target_": "mylab.balance.softened", "width": 8},
     "model._target_='mylab.balance.softened' is invalid: its parameters must be (settings, regularization, "
     "input_shape)"),
])
def test_a_users_choice_is_checked_as_a_built_in_one_in_one_line(example, model, message):
    with pytest.raises(UserError) as error:
        config.check(users_choice(model))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_users_choice_reaches_its_function_as_its_schemas_instance(example):
    settings = config.check(users_choice({"name": "tinynet", "_target_": "mylab.nets.build", "width": 8}))
    assert type(settings["model"]).__name__ == "TinyNet" and settings["model"].width == 8
