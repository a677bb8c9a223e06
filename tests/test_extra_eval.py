"""Extra evaluation sets (data.extra_eval): scored once each at the run's threshold, beside the test
split, and never feeding training, early stopping or the threshold."""

import shutil

import numpy as np
import pytest

from pneumo_exp import UserError, data
from pneumo_exp.run import run_experiment
from tests.helpers import QUIET, make_config, metrics_of, runs_in, xray


def labelled_folder(root, normal=6, sick=6):
    """root/{NORMAL,PNEUMONIA}/ of fake X-rays (viral pneumonia, by the file names)."""
    rng = np.random.default_rng(7)
    for label, cls, n in ((0, "NORMAL", normal), (1, "PNEUMONIA", sick)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"IM-{900 + i:04d}-0001.jpeg" if label == 0 else f"person{900 + i}_virus_{i}.jpeg"
            xray(label, rng).save(root / cls / name)
    return root


def test_an_extra_set_is_scored_at_the_runs_threshold_and_changes_nothing_else(kaggle_root, tmp_path):
    site = labelled_folder(tmp_path / "site_b")

    def run(*extra):
        store = [f"tracking.uri=sqlite:///{tmp_path}/{len(extra)}.db",
                 f"tracking.artifact_location={tmp_path}/a{len(extra)}"]
        overrides = ["data=chest_xray", f"data.root={kaggle_root}", *QUIET, "train.epochs=2", *store, *extra]
        run_experiment(make_config(overrides), overrides)
        (found,) = runs_in(f"{tmp_path}/{len(extra)}.db")
        return metrics_of(found)

    plain, with_site = run(), run(f"data.extra_eval={{site_b:{site}}}")
    extra = {k: v for k, v in with_site.items() if k.startswith("extra_")}
    assert {"extra_site_b_auc", "extra_site_b_accuracy", "extra_site_b_recall_virus", "extra_site_b_tp",
            "extra_site_b_ece"} <= set(extra)
    assert extra["extra_site_b_tp"] + extra["extra_site_b_fn"] == 6  # its 6 pneumonia images, once
    assert extra["extra_site_b_recall_virus"] == pytest.approx(extra["extra_site_b_recall"])
    # training, the threshold and the test scores are those of the same run without it
    scores = [k for k in plain if k.startswith(("test_", "final_val_", "threshold", "epochs_trained"))]
    assert "test_auc_ci_low" in scores and "threshold" in scores
    for key in scores:
        assert with_site[key] == pytest.approx(plain[key], abs=1e-6, nan_ok=True), key


@pytest.mark.parametrize("value, message", [
    ("{site_b:TMP/missing}", r"^data\.extra_eval\.site_b=.*missing is not a folder: pass a folder holding"),
    ("{site_b:TMP/empty}", r"^data\.extra_eval\.site_b: no images in .*empty/NORMAL"),
    ("{site-b:TMP/site}", r"^data\.extra_eval\.site-b: the name 'site-b' is invalid"),
])
def test_a_missing_or_malformed_extra_set_is_one_line_before_training(kaggle_root, tmp_path, value, message):
    labelled_folder(tmp_path / "site")
    (tmp_path / "empty" / "NORMAL").mkdir(parents=True)
    cfg = make_config(["data=chest_xray", f"data.root={kaggle_root}",
                       "data.extra_eval=" + value.replace("TMP", str(tmp_path))])
    with pytest.raises(UserError, match=message):
        data.check(cfg.data)  # run.py calls it before the store opens and anything decodes


def test_an_extra_set_of_the_runs_own_training_images_is_one_line_before_training(kaggle_root):
    cfg = make_config(["data=chest_xray", f"data.root={kaggle_root}",
                       f"data.extra_eval={{leak:{kaggle_root}/train}}"])
    with pytest.raises(UserError, match=r"^data\.extra_eval\.leak=.*train holds the run's own training"):
        data.check(cfg.data)


def test_an_extra_set_sharing_patients_with_training_is_counted_and_said(kaggle_root, tmp_path):
    site = labelled_folder(tmp_path / "site")
    shutil.copy(kaggle_root / "train" / "NORMAL" / "IM-0004-0000.jpeg", site / "NORMAL" / "IM-0004-0007.jpeg")
    cfg = make_config(["data=chest_xray", f"data.root={kaggle_root}", f"data.extra_eval={{site:{site}}}",
                       "data.image_size=32"])
    assert data.load(cfg.data).extra_shared == {"site": 1}
