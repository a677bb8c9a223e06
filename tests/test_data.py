import errno
import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_exp import UserError
from pneumo_exp.data import Split, decode, folder, load, pipeline
from pneumo_exp.data.folder import find_root, scan
from pneumo_exp.data.splits import patient_id, split_by_patient
from tests.helpers import (
    REAL_KAGGLE,
    REAL_NPZ,
    REAL_ORIGINALS,
    chest_data_cfg,
    make_config,
    needs_real_kaggle,
    needs_real_npz,
    needs_real_originals,
    write_kaggle_layout,
    xray,
)


@pytest.mark.parametrize("name, patient", [
    ("person123_bacteria_456.jpeg", "person123"),
    ("person1_virus_6.jpeg", "person1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "IM-1427"),
    ("scan.png", ""),
])
def test_patient_id_from_kermany_file_names(name, patient):
    assert patient_id(Path(name)) == patient


def test_split_by_patient_keeps_patients_whole_and_classes_stratified():
    patients = np.repeat([f"p{i}" for i in range(80)], 3)
    labels = np.repeat([0] * 20 + [1] * 60, 3)
    kept, held = split_by_patient(patients, labels, 0.25, seed=0)
    assert not set(patients[kept]) & set(patients[held])
    assert len(set(patients[held])) == 20
    assert np.mean(labels[held]) == pytest.approx(0.75)


def test_chest_xray_without_test_holds_out_patients(kaggle_root):
    data = load(chest_data_cfg(kaggle_root))
    assert data.test_source == "held_out_from_train"
    assert data.shared_patients() == {"patients_shared_train_val": 0, "patients_shared_train_test": 0,
                                      "patients_shared_val_test": 0}
    counts = data.counts()
    assert sum(counts.values()) == 2 * 2 * 12  # 12 patients per class, 2 images each
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 1)
        assert set(split.labels) == {0, 1}


def test_chest_xray_official_test_and_parent_folder(tmp_path):
    root = write_kaggle_layout(tmp_path, with_test=True)
    data = load(chest_data_cfg(root))  # the folder that contains chest_xray/, as unzipped
    assert data.test_source == "official"
    assert data.counts()["n_test_normal"] == 8
    assert data.fingerprint.startswith("files:")


def test_patients_are_counted_across_an_official_test_folder_and_only_when_all_are_named(tmp_path):
    root = write_kaggle_layout(tmp_path, with_test=True) / "chest_xray"
    sick = root / "test" / "PNEUMONIA"
    shutil.copy(sick / "person200_bacteria_0.jpeg", sick / "person3_virus_9.jpeg")  # train's person3
    assert load(chest_data_cfg(root)).shared_patients()["patients_shared_train_test"] == 1
    (sick / "person3_virus_9.jpeg").rename(sick / "scan.jpeg")  # a name without a patient
    assert load(chest_data_cfg(root)).shared_patients() == {}  # unknown, not 0


def test_a_patient_leak_is_found_however_many_images_name_no_patient(tmp_path):
    root = write_kaggle_layout(tmp_path, with_test=True) / "chest_xray"
    sick = root / "test" / "PNEUMONIA"
    shutil.copy(sick / "person200_bacteria_0.jpeg", sick / "person3_virus_9.jpeg")  # train's person3
    shutil.copy(sick / "person200_bacteria_1.jpeg", sick / "scan.jpeg")  # and a name without a patient
    assert load(chest_data_cfg(root)).shared_patients()["patients_shared_train_test"] == 1


def test_the_data_fingerprint_follows_content_not_location(tmp_path):
    root = write_kaggle_layout(tmp_path / "a") / "chest_xray"
    before = load(chest_data_cfg(root)).fingerprint
    moved = shutil.copytree(root, tmp_path / "b" / "chest_xray")
    assert load(chest_data_cfg(moved)).fingerprint == before
    image = moved / "train" / "NORMAL" / "IM-0003-0000.jpeg"
    raw = bytearray(image.read_bytes())
    raw[-10] ^= 0xFF  # the same size, other content
    image.write_bytes(bytes(raw))
    assert load(chest_data_cfg(moved)).fingerprint != before


def test_chest_xray_missing_class_folder_is_one_line(tmp_path):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    shutil.rmtree(root / "train" / "NORMAL")
    with pytest.raises(UserError, match=r"no images in .*train/NORMAL"):
        load(chest_data_cfg(root))


def test_a_fraction_too_small_to_hold_out_both_classes_is_one_line(kaggle_root):
    with pytest.raises(UserError, match=r"^a fraction of 0.95 of 24 patients leaves 23 held out and 1 kept"):
        split_by_patient(np.repeat([f"p{i}" for i in range(24)], 2), np.repeat([0, 1], 24), 0.95, 0)
    with pytest.raises(UserError, match=r"^a fraction of 0.04 of 24 patients leaves 1 held out"):
        load(chest_data_cfg(kaggle_root, "data.test_fraction=0.04"))


def test_chest_xray_missing_root_and_missing_train(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_root(tmp_path / "absent")
    with pytest.raises(UserError, match="no train/ folder"):
        find_root(tmp_path)


def test_npz_with_wrong_md5_is_refused(tiny_npz):
    path, _ = tiny_npz
    cfg = make_config(["data=pneumoniamnist", f"data.path={path}"]).data
    with pytest.raises(UserError, match="not the official 28209eda62fecd6e6a2d98b1501bb15f"):
        load(cfg)


def test_npz_without_network_says_how_to_provide_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cfg = make_config(["data.url=http://127.0.0.1:9/pneumoniamnist.npz"]).data
    with pytest.raises(UserError, match=r"cannot download PneumoniaMNIST .* pass data\.path=FILE"):
        load(cfg)


def test_npz_is_resized_to_the_configured_size(npz_overrides):
    data = load(make_config([*npz_overrides, "data.image_size=40"]).data)
    assert data.train.images.shape == (40, 40, 40, 1)
    assert data.counts() == {"n_train_normal": 10, "n_train_pneumonia": 30, "n_val_normal": 4,
                             "n_val_pneumonia": 12, "n_test_normal": 4, "n_test_pneumonia": 12}


def make_split(labels):
    labels = np.asarray(labels, dtype=np.int32)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, 4, 4, 1), np.uint8)
    return Split(images, labels, np.full(len(labels), ""))


def test_pipeline_shuffles_each_image_once_per_epoch_in_3_channels():
    split = make_split([0, 1] * 10)
    batches = list(pipeline.batches(split, 8, channels=3, shuffle=True))
    pixels = np.concatenate([x.numpy() for x, _ in batches])
    assert pixels.shape == (20, 4, 4, 3) and pixels.dtype == np.float32
    assert np.all(pixels[..., 0] == pixels[..., 2])
    assert sorted(pixels[:, 0, 0, 0]) == list(range(20))
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert np.array_equal(labels, split.labels[pixels[:, 0, 0, 0].astype(int)])


def test_pipelines_run_without_tf_data_autotuning_also_when_augmented():
    """Its background thread stalled the end of an epoch for 20-40 s (without_autotuning's docstring)."""
    from pneumo_exp.models import augment

    split = make_split([0, 1] * 4)
    xray = make_config(["augment=xray"]).augment
    for ds in (pipeline.batches(split, 4, 1),
               augment.apply(pipeline.batches(split, 4, 1, shuffle=True), xray, 0)):
        assert ds.options().autotune.enabled is False


def test_oversampled_batches_are_balanced():
    split = make_split([0] * 10 + [1] * 90)
    labels = np.concatenate([y.numpy() for _, y in pipeline.batches(split, 16, 1, sampling="over").take(200)])
    assert abs(labels.mean() - 0.5) < 0.03  # 3200 draws: sd of the mean is 0.009
    plain = np.concatenate([y.numpy() for _, y in pipeline.batches(split, 16, 1, shuffle=True)])
    assert plain.mean() == pytest.approx(0.9)


@needs_real_npz
def test_real_pneumoniamnist_matches_its_provenance():
    data = load(make_config([f"data.path={REAL_NPZ}", "data.image_size=32"]).data)
    assert data.counts() == {"n_train_normal": 1214, "n_train_pneumonia": 3494,
                             "n_val_normal": 135, "n_val_pneumonia": 389,
                             "n_test_normal": 234, "n_test_pneumonia": 390}
    # MedMNIST's val holds 8 exact copies of training images (none of test images)
    assert len(data.duplicates) == 8
    assert all(d.startswith("train_images[") and " = val_images[" in d for d in data.duplicates)


@needs_real_npz
@needs_real_originals
def test_full_size_xrays_made_as_medmnist_match_their_pneumoniamnist_images():
    # the 16 Kermany val files are in PneumoniaMNIST's train or val: each finds its own npz image
    with np.load(REAL_NPZ) as npz:
        pool = np.concatenate([npz["train_images"], npz["val_images"]]).astype(np.float32)
    files = sorted(REAL_ORIGINALS.rglob("*.jpeg"))
    images, kept, _, _ = decode(files, 28, source_size=28)
    assert len(files) == 16 and kept.all()
    for image in images[..., 0].astype(np.float32):
        nearest, second = np.sort(np.abs(pool - image).mean(axis=(1, 2)))[:2]
        assert nearest < 5 and second > 10  # grey levels, mean absolute difference


@needs_real_kaggle
def test_real_kermany_split_shares_no_patient():
    cfg = chest_data_cfg(REAL_KAGGLE)
    files, labels, _ = scan(REAL_KAGGLE / "train")
    val_files, val_labels, _ = scan(REAL_KAGGLE / "val")
    files, labels = np.array(files + val_files), np.array(labels + val_labels)
    assert (int(np.sum(labels == 0)), int(np.sum(labels == 1))) == (1349, 3883)
    patients = np.array([patient_id(p) for p in files])
    assert len(set(patients)) < 0.6 * len(files)  # many patients have several images
    keep, test = split_by_patient(patients, labels, cfg.test_fraction, cfg.split_seed)
    train, val = split_by_patient(patients[keep], labels[keep], cfg.val_fraction, cfg.split_seed)
    groups = [set(patients[keep][train]), set(patients[keep][val]), set(patients[test])]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (
        groups[1] & groups[2])


def test_decoded_images_are_cached_once_and_rebuilt_when_a_file_changes(tmp_path):
    root = write_kaggle_layout(tmp_path / "data") / "chest_xray"
    cached = [f"data.cache_dir={tmp_path}/cache"]
    first, second = load(chest_data_cfg(root, *cached)), load(chest_data_cfg(root, *cached))
    assert (first.cache, second.cache) == ("miss", "hit")
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(first, name).images, getattr(second, name).images)
        assert np.array_equal(getattr(first, name).labels, getattr(second, name).labels)
    assert load(chest_data_cfg(root, *cached, "data.image_size=40")).cache == "miss"  # a size of its own
    image = root / "train" / "NORMAL" / "IM-0000-0000.jpeg"
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(image)  # an edited image
    changed = load(chest_data_cfg(root, *cached))
    assert changed.cache == "miss"
    assert load(chest_data_cfg(root, "data.cache_dir=null")).cache == "off"


def test_a_codec_installed_after_a_file_failed_to_decode_reads_it(tmp_path, monkeypatch):
    """The cache remembers no decode failure past a change of codecs (pip install pyjpegls, say):
    a file that failed is decoded again, and kept where it now decodes."""
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    odd = root / "train" / "NORMAL" / "IM-0002-0007.jpeg"
    xray(0, np.random.default_rng(0)).save(odd)
    cached = [f"data.cache_dir={tmp_path}/cache"]
    real_decode = folder.decode

    def without_the_codec(files, size, *args):
        images, ok, digests, problems = real_decode(files, size, *args)
        failed = np.array([path == odd for path in files])
        return (images[~failed[ok]], ok & ~failed, digests,
                [*problems, f"{odd}: cannot decode (no codec for it)"])

    monkeypatch.setattr(folder, "decode", without_the_codec)
    assert any("no codec" in s for s in load(chest_data_cfg(root, *cached)).skipped)
    monkeypatch.setattr(folder, "decode", real_decode)
    codecs = importlib.import_module("pneumo_exp.data.decode")  # the module: `data.decode` is its function
    monkeypatch.setattr(codecs, "CODECS", (*codecs.CODECS, "pip"))  # as if a codec were installed
    again = load(chest_data_cfg(root, *cached))
    assert again.cache == "miss" and not again.skipped


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_run(tmp_path, monkeypatch, capsys):
    root = write_kaggle_layout(tmp_path / "data")
    (tmp_path / "file").write_text("")
    assert load(chest_data_cfg(root, f"data.cache_dir={tmp_path}/file/cache")).cache == "off"
    assert "not usable (Not a directory): decoding without it" in capsys.readouterr().out

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    data = load(chest_data_cfg(root, f"data.cache_dir={tmp_path}/cache"))
    assert data.cache == "off" and sum(data.counts().values()) == 48
    assert "could not write the image cache" in capsys.readouterr().out
    assert not list((tmp_path / "cache").glob("*.partial"))  # no half-written file left behind
