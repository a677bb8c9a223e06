import re
import subprocess

import pytest
from omegaconf import OmegaConf

from pneumo_exp import UserError
from pneumo_exp.__main__ import home_quoted
from pneumo_exp.config import GROUPS, check
from pneumo_exp.tracking import store
from tests.helpers import PROJECT, choices, cli, make_config


def test_default_config_composes_the_notebook_setup():
    cfg = make_config([])
    check(cfg)
    assert (cfg.data.name, cfg.model.name, cfg.regularization.name, cfg.imbalance.name) == (
        "pneumoniamnist", "seed_cnn", "bn_dropout", "none")
    assert cfg.train.batch_size == 16
    assert cfg.data.md5 == "28209eda62fecd6e6a2d98b1501bb15f"


@pytest.mark.parametrize("overrides, key", [
    (["train.epochs=0"], "train.epochs"),
    (["data.image_size=16"], "data.image_size"),
    (["data.channels=2"], "data.channels"),
    (["train.learning_rate=-1"], "train.learning_rate"),
    (["train.intra_op_threads=-2"], "train.intra_op_threads"),
    (["train.precision=float16"], "train.precision"),
    (["imbalance=focal", "imbalance.gamma=-1"], "imbalance.gamma"),
    (["data=chest_xray"], "data.root"),
    (["data=chest_xray", "data.root=x", "data.val_fraction=1.5"], "data.val_fraction"),
    # values that passed the check once and crashed later, after the run had opened
    (["seed=-5"], "seed"),
    (["seed=4294967296"], "seed"),
    (["data=chest_xray", "data.root=x", "data.split_seed=-1"], "data.split_seed"),
    (["data.channels=3.0"], "data.channels"),
    (["data.image_size=100000"], "data.image_size"),
    ([f"tracking.backup_dir={PROJECT}/README.md"], "tracking.backup_dir"),
    ([f"tracking.backup_dir={PROJECT}/README.md/backups"], "tracking.backup_dir"),
    ([f"tracking.artifact_location={PROJECT}/README.md/artifacts"], "tracking.artifact_location"),
    (["train.learning_rate=inf"], "train.learning_rate"),
    (["train.weight_decay=nan"], "train.weight_decay"),
    (["regularization.batch_norm=1"], "regularization.batch_norm"),
    (["tracking.experiment=' '"], "tracking.experiment"),
    (["data.md5=5"], "data.md5"),
    (["eval.adapt=entropy"], "eval.adapt"),
    (["eval.alpha=0"], "eval.alpha"),
    (["eval.min_images=1"], "eval.min_images"),
    (["eval.labelled_bn=maybe"], "eval.labelled_bn"),
    (["eval.labelled=7"], "eval.labelled"),
    (["eval.labelled={site_b:50}"], "eval.labelled.site_b"),
    (["eval.labelled={test:1}"], "eval.labelled.test"),
    (["eval.labelled={test:/no/such/folder}"], "eval.labelled.test"),
    (["eval.labelled_head=true", "train.members=2"], "eval.labelled_head"),
    (["eval.shift_prevalence_margin=0"], "eval.shift_prevalence_margin"),
    (["eval.shift_probability_margin=2"], "eval.shift_probability_margin"),
])
def test_invalid_values_are_rejected_in_one_line(overrides, key):
    with pytest.raises(UserError) as error:
        check(make_config(overrides))
    message = str(error.value)
    assert message.startswith(f"{key}=") and "\n" not in message


def test_the_removed_adaptation_both_says_why_and_what_to_use():
    with pytest.raises(UserError) as error:
        check(make_config(["eval.adapt=both"]))
    assert str(error.value) == (
        "eval.adapt='both' is invalid: use none, prior, bn, tent or all (both was removed: BatchNorm "
        "statistics re-estimated on a set absorb part of its change in pneumonia share, which prior then "
        "re-estimates wrongly; use bn)")


def conf_values(group: str, choice: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(PROJECT / "conf" / group / f"{choice}.yaml"))


# (group, choice, key) of each list a choice's YAML sets (Hydra's own `defaults` list aside)
LIST_KEYS = [(group, choice, key) for group in GROUPS for choice in choices(group)
             for key, value in conf_values(group, choice).items()
             if isinstance(value, list) and key != "defaults"]


@pytest.mark.parametrize("group, choice, key", LIST_KEYS)
@pytest.mark.parametrize("value", ["5", "null", "[]", "[0]", "[-8]", "wide", "[true]", "[[8]]"])
def test_every_list_valued_key_of_the_wrong_shape_is_one_line(group, choice, key, value):
    with pytest.raises(UserError, match=rf"^{group}\.{key}=.* is invalid: use a list of positive integers"):
        check(make_config([f"{group}={choice}", f"{group}.{key}={value}"]))


@pytest.mark.parametrize("group, choice, key", LIST_KEYS)
def test_a_mapping_where_conf_has_a_list_names_the_key_and_the_kind(group, choice, key):
    import pneumo_exp.__main__ as command_line

    with pytest.raises(UserError, match=rf"^{group}\.{key}={{a:1}} is invalid: {group}\.{key} is a list in "
                       r"conf/, not a dict: use a list"):
        command_line.check([f"{group}={choice}", f"{group}.{key}={{a:1}}"])


@pytest.mark.parametrize("choice, key", [
    (["data=chest_xray"], "data.root"), (["data=chest_xray", "data.root=x"], "data.cache_dir"),
    ([], "data.path"), ([], "tracking.backup_dir"), ([], "tracking.artifact_location")])
@pytest.mark.parametrize("value", ["true", "5", "1.5", "[a]", "{a:b}"])
def test_a_path_valued_key_given_no_path_is_one_line(choice, key, value):
    with pytest.raises(UserError, match=rf"^{key}=.* is invalid: (use|pass) "):
        check(make_config([*choice, f"{key}={value}"]))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return cli(*args, cwd=PROJECT, timeout=120)


def test_cli_bad_value_prints_one_line_and_exits_2():
    result = run_cli("train.epochs=0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: train.epochs=0 is invalid: use an integer >= 1"]


@pytest.mark.parametrize("mode, flags", [("run", []), ("sweep", ["-m", "seed=0,1"])])
def test_an_output_folder_below_a_file_is_one_line_before_hydra_starts(tmp_path, mode, flags):
    (tmp_path / "a_file").touch()
    result = run_cli(*flags, f"hydra.{mode}.dir={tmp_path}/a_file/out")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: hydra.{mode}.dir={tmp_path}/a_file/out is invalid: {tmp_path}/a_file is a file, where the "
        f"output folder would go: move the file, or pass hydra.{mode}.dir=A_FOLDER"]


def test_cli_unknown_group_choice_names_the_choices_in_one_line():
    result = run_cli("-m", "imbalance=none,smote")  # every choice of a sweep, not only the first
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    listed = re.fullmatch(r"error: imbalance=smote is not a choice: use ((?:\w+, )*\w+) or (\w+)", line)
    assert listed, line
    assert [*listed[1].split(", "), listed[2]] == choices("imbalance")


def test_cli_misspelled_key_is_one_line_not_hydras_advice_to_append_it():
    result = run_cli("train.mixed_precision=true")  # the key train.precision replaced
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown config key train.mixed_precision: check its spelling against conf/ "
        "(`python -m pneumo_exp --cfg job` prints every key)"]


def test_a_key_of_another_choice_says_which_choice_has_it():
    result = run_cli("data.root=/data/chest_xray")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: data.root is a key of data=chest_xray, not of the data chosen: add data=chest_xray"]


def test_cli_missing_data_root_fails_before_training(tmp_path):
    result = run_cli("data=chest_xray", f"data.root={tmp_path}/nowhere")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data.root={tmp_path}/nowhere does not exist: pass the folder that holds train/"]


def test_a_home_folder_typed_unquoted_reaches_the_key_expanded(tmp_path):
    """bash passes `data.root=~/nowhere` as it is, and Hydra's grammar has no ~: the value is quoted
    for Hydra and the key expands it, as the README writes it."""
    result = cli("data=chest_xray", "data.root=~/nowhere", cwd=PROJECT, timeout=120,
                 env={"HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data.root={tmp_path}/nowhere does not exist: pass the folder that holds train/"]


def test_home_values_are_quoted_for_hydra_and_sweeps_left_alone():
    assert home_quoted(["data.root=~/x", "tracking.uri=sqlite:///~/s/mlflow.db", "seed=0,1",
                        "data.root='~/q'", "data.root=/abs"]) == [
        "data.root='~/x'", "tracking.uri='sqlite:///~/s/mlflow.db'", "seed=0,1", "data.root='~/q'",
        "data.root=/abs"]


def test_a_tracking_store_under_home_is_made_there(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.store_uri("sqlite:///~/runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"


@pytest.mark.parametrize("recipe, model, input_norm, imbalance, augment, erasing",
                         [("best_cpu_pneumoniamnist", "resnet_small", "rescale", "none", "xray_strong", 0),
                          ("best_cpu_chest_xray", "seed_cnn", "standardize", "focal", "xray", 0.5)])
def test_recipes_compose_into_valid_configs(recipe, model, input_norm, imbalance, augment, erasing, tmp_path):
    cfg = make_config([f"+experiment={recipe}", f"data.root={tmp_path}"] if "chest" in recipe
                      else [f"+experiment={recipe}"])
    check(cfg)
    chosen = (cfg.model.name, cfg.model.input_norm, cfg.imbalance.name, cfg.augment.name, cfg.augment.erasing)
    assert chosen == (model, input_norm, imbalance, augment, erasing)
    assert (cfg.train.lr_schedule, cfg.train.tta_shift) == ("cosine", 0.05)


def test_operating_point_and_model_values_are_checked():
    for overrides, message in (
            (["train.threshold=1.5"],
             "train.threshold=1.5 is invalid: use youden, sensitivity, calibrated or balanced, or a number"),
            (["train.lr_schedule=step"], "train.lr_schedule='step' is invalid: use constant or cosine"),
            (["train.members=0"], "train.members=0 is invalid: use an integer >= 1"),
            (["train.ema_momentum=1"], "train.ema_momentum=1 is invalid: use a number in [0, 1)"),
            (["train.weight_decay=-0.1"], "train.weight_decay=-0.1 is invalid: use a number >= 0"),
            (["train.tta_shift=0.5"], "train.tta_shift=0.5 is invalid: use a fraction in [0, 0.5)"),
            (["train.tta_shift=0.005", "data.image_size=64"],
             "train.tta_shift=0.005 is invalid: it shifts a 64 px image by 0 pixels: use more than 0.007812"),
            (["model=keras_app", "model.backbone=ResNet50"], "model.backbone='ResNet50' is invalid"),
            (["model=keras_app", "model.backbone=EfficientNetB9"],
             "model.backbone='EfficientNetB9' is invalid"),
            (["model=keras_app", "model.weights=imagenet", "data.channels=1"],
             "data.channels=1 is invalid: ImageNet weights need data.channels=3"),
            (["model=keras_app", "regularization=dropout_only"],
             "regularization='dropout_only' is invalid: keras_app backbones keep their own BatchNorm"),
            (["model.input_norm=zscore"],
             "model.input_norm='zscore' is invalid: use rescale (pixels / 255) or standardize"),
            (["model=resnet_small", "model.head_dropout=0.8", "regularization.dropout_scale=1.3"],
             "model.head_dropout=0.8 is invalid: use a number >= 0 that times regularization.dropout_scale")):
        with pytest.raises(UserError, match="^" + re.escape(message)):
            check(make_config(overrides))


def test_overrides_are_checked_for_every_swept_choice_and_intervals_left_to_the_sweeper():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import pneumo_exp.__main__ as command_line

    parsed = OverridesParser.create().parse_overrides(
        ["imbalance.gamma=interval(0.5,5)", "seed=range(0,3)", "imbalance=none,focal", "+experiment=quick"])
    assert command_line.variants(parsed) == [["seed=0", "imbalance=none", "+experiment=quick"],
                                             ["seed=0", "imbalance=focal", "+experiment=quick"]]
    command_line.check(["-m", "+sweeps=search", "imbalance=focal", "imbalance.gamma=interval(0.5,5)"])
    with pytest.raises(UserError, match=r"^experiment=quik is not a choice: use best_cpu_chest_xray, "):
        command_line.check(["+experiment=quik"])
