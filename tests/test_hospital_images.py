"""Images as hospitals export them: 16-bit PNGs, DICOM files, phone photos turned by EXIF, folders
beside the class folders. Each must come out as the 8-bit picture it holds, or be listed."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_exp import UserError
from pneumo_exp.data import decode, load
from pneumo_exp.data.folder import scan
from pneumo_exp.run import run_experiment
from tests.helpers import (
    QUIET,
    chest_data_cfg,
    make_config,
    metrics_of,
    runs_in,
    store_overrides,
    write_kaggle_layout,
    xray,
)

needs_pydicom = pytest.mark.skipif(importlib.util.find_spec("pydicom") is None,
                                   reason="pydicom absent: pip install 'pneumo-exp[dicom]'")


def full_range(label: int, seed: int, size: int = 64) -> np.ndarray:
    """A fake X-ray whose pixels span 0-255: what a min-max stretched DICOM gives back unchanged."""
    pixels = np.asarray(xray(label, np.random.default_rng(seed), size)).copy()
    pixels[0, 0], pixels[-1, -1] = 0, 255
    return pixels


def save_png16(pixels: np.ndarray, path: Path, factor: int = 257) -> None:
    """8-bit pixels as a 16-bit grayscale PNG: x 257 fills 16 bits, x 16 is a 12-bit image."""
    Image.fromarray(pixels.astype(np.uint16) * factor).save(path)
    assert Image.open(path).mode == "I;16"


def save_dicom(pixels: np.ndarray, path: Path, monochrome1: bool = True, window: bool = True) -> None:
    """8-bit pixels as a 12-bit DICOM file, written by pydicom: stored = (value x 16 + 100) / 2
    undone by RescaleSlope 2 and RescaleIntercept -100; with monochrome1 stored inverted (there
    0 is white); with window a window centre/width that spans the values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", *pixels.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    shown = pixels.astype(np.int64) * 16  # 0-4080: what a viewer shows, brighter = denser
    if monochrome1:
        shown = 4080 - shown
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    if window:
        ds.WindowCenter, ds.WindowWidth = 2040, 4081  # the modality values span 0-4080
    ds.PixelData = ((shown + 100) // 2).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def decoded(path: Path, size: int = 32) -> np.ndarray:
    images, ok, _, problems = decode([path], size)
    assert ok.all() and problems == []
    return images[0, ..., 0].astype(int)


def test_a_16_bit_png_decodes_as_its_8_bit_source(tmp_path):
    pixels = np.asarray(xray(1, np.random.default_rng(0), 64))  # spans about 20-255: no stretch needed
    Image.fromarray(pixels).save(tmp_path / "8bit.png")
    save_png16(pixels, tmp_path / "16bit.png")
    save_png16(pixels, tmp_path / "12bit.png", factor=16)  # top 4080: a 12-bit detector's image
    source = decoded(tmp_path / "8bit.png")
    assert np.abs(decoded(tmp_path / "16bit.png") - source).max() == 0
    assert np.abs(decoded(tmp_path / "12bit.png") - source).max() <= 1


@needs_pydicom
@pytest.mark.parametrize("monochrome1, window", [(True, True), (False, False)])
def test_a_dicom_decodes_as_its_8_bit_source(tmp_path, monochrome1, window):
    pixels = full_range(1, 1)
    Image.fromarray(pixels).save(tmp_path / "source.png")
    save_dicom(pixels, tmp_path / "IM-0001-0001.dcm", monochrome1, window)
    assert np.abs(decoded(tmp_path / "IM-0001-0001.dcm") - decoded(tmp_path / "source.png")).max() <= 1


@needs_pydicom
def test_a_multi_frame_dicom_gives_its_first_frame_and_a_colour_one_its_grey(tmp_path):
    import pydicom

    pixels = full_range(1, 7)
    save_dicom(pixels, tmp_path / "one.dcm", monochrome1=False, window=False)
    multi = pydicom.dcmread(tmp_path / "one.dcm")
    multi.NumberOfFrames, multi.PixelData = 2, multi.PixelData + bytes(len(multi.PixelData))  # 2nd black
    multi.save_as(tmp_path / "multi.dcm")
    colour = pydicom.dcmread(tmp_path / "one.dcm")
    colour.SamplesPerPixel, colour.PhotometricInterpretation, colour.PlanarConfiguration = 3, "RGB", 0
    colour.BitsAllocated, colour.BitsStored, colour.HighBit = 8, 8, 7
    colour.PixelData = np.repeat(pixels[..., None], 3, axis=2).tobytes()
    colour.save_as(tmp_path / "colour.dcm")
    one = decoded(tmp_path / "one.dcm")
    assert np.array_equal(decoded(tmp_path / "multi.dcm"), one)
    assert np.abs(decoded(tmp_path / "colour.dcm") - one).max() <= 1


@needs_pydicom
def test_broken_dicoms_are_left_out_with_a_reason(tmp_path):
    import pydicom

    (tmp_path / "garbage.dcm").write_bytes(b"<html>404 Not Found</html>")
    save_dicom(full_range(0, 2), tmp_path / "no_pixels.dcm")
    dataset = pydicom.dcmread(tmp_path / "no_pixels.dcm")
    del dataset.PixelData
    dataset.save_as(tmp_path / "no_pixels.dcm")
    _, ok, _, problems = decode([tmp_path / "garbage.dcm", tmp_path / "no_pixels.dcm"], 32)
    assert not ok.any()
    assert [line.split(": ", 1)[1].split(": ")[0] for line in problems] == ["cannot decode (DICOM"] * 2
    assert "no 'Pixel Data'" in problems[1]


@needs_pydicom  # to write the file
def test_without_pydicom_a_dicom_is_left_out_and_a_folder_of_them_stops_in_one_line(tmp_path, monkeypatch):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    save_dicom(full_range(0, 3), root / "train" / "NORMAL" / "IM-0900-0001.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now fails, as when not installed
    _, ok, _, problems = decode([root / "train" / "NORMAL" / "IM-0900-0001.dcm"], 32)
    assert not ok.any() and "pip install 'pneumo-exp[dicom]'" in problems[0]
    with pytest.raises(UserError, match=r"1 \.dcm files, such as .*IM-0900-0001\.dcm: DICOM needs pydicom"):
        load(chest_data_cfg(root))


def test_exif_orientation_is_applied(tmp_path):
    upright = xray(1, np.random.default_rng(4), 96)  # the blob top left: turned, it is elsewhere
    upright.save(tmp_path / "upright.jpeg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image is shown turned 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpeg", quality=95, exif=exif)
    difference = np.abs(decoded(tmp_path / "turned.jpeg") - decoded(tmp_path / "upright.jpeg"))
    assert difference.mean() < 3  # JPEG's error; shown as stored: 16


def test_a_folder_beside_the_class_folders_is_listed(tmp_path):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    (root / "train" / "COVID").mkdir()
    xray(1, np.random.default_rng(5)).save(root / "train" / "COVID" / "covid1.jpeg")
    (root / "train" / "readme.txt").write_text("exported 2024-03-01")
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _, _, ignored = scan(root / "train")
    only = "(only NORMAL/ and PNEUMONIA/ are read)"
    assert ignored == [f"{root}/train/COVID: not a class folder {only}",
                       f"{root}/train/readme.txt: not in a class folder {only}"]


def write_hospital_layout(root: Path) -> Path:
    """A Kaggle layout (train/, val/, test/) of 16-bit PNGs and DICOM files, Kermany file names."""
    seed = 0
    for split, patients in {"train": range(16), "val": range(100, 104), "test": range(200, 208)}.items():
        for pid in patients:
            for image in range(2):
                suffix = ".dcm" if (pid + image) % 2 else ".png"
                for label, name in ((0, f"NORMAL/IM-{pid:04d}-{image:04d}"),
                                    (1, f"PNEUMONIA/person{pid}_bacteria_{image}")):
                    path = root / split / f"{name}{suffix}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    seed += 1
                    pixels = full_range(label, seed, 48)
                    if suffix == ".dcm":
                        save_dicom(pixels, path, monochrome1=bool(pid % 2))  # both classes alike
                    else:
                        save_png16(pixels, path)
    return root


@needs_pydicom
def test_a_run_on_16_bit_pngs_and_dicoms_learns(tmp_path):
    root = write_hospital_layout(tmp_path / "hospital")
    overrides = ["data=chest_xray", f"data.root={root}", *QUIET, "train.epochs=3",
                 "model=resnet_small", "regularization=none", *store_overrides(tmp_path)]  # learns in 3
    scores = run_experiment(make_config(overrides), overrides).scores
    [run] = runs_in(tmp_path / "mlflow.db")
    assert run.info.status == "FINISHED" and metrics_of(run)["n_skipped_files"] == 0
    assert scores["test_auc"] > 0.8


def test_big_endian_16_bit_and_float_images_are_scaled_too():
    from pneumo_exp.data.decode import to_8bit

    pixels = full_range(0, 6, 16)
    big_endian = Image.frombytes("I;16B", (16, 16), (pixels.astype(">u2") * 257).tobytes())
    assert np.array_equal(np.asarray(to_8bit(big_endian)), pixels)
    as_float = Image.fromarray(pixels.astype(np.float32) / 255 - 0.5)  # mode F, negative values: stretched
    assert np.abs(np.asarray(to_8bit(as_float)).astype(int) - pixels).max() <= 1


def test_images_in_per_patient_subfolders_are_read_and_kept_together(tmp_path):
    """NORMAL/patient7/x.jpeg, as hospitals export studies: read, and the subfolder is the patient
    that the patient-disjoint split keeps whole (a hidden subfolder is left out, said)."""
    root = tmp_path / "site"
    rng = np.random.default_rng(0)
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        for patient in range(12):
            folder = root / "train" / cls / f"patient{label}{patient:02d}" / "study1"
            folder.mkdir(parents=True)
            for image in range(2):
                xray(label, rng).save(folder / f"{image}.jpeg")
    (root / "train" / "NORMAL" / ".trash").mkdir()
    (root / "train" / "NORMAL" / ".trash" / "old.jpeg").write_bytes(b"x")
    files, _, ignored = scan(root / "train")
    assert len(files) == 48 and ignored == [f"{root}/train/NORMAL/.trash/old.jpeg: hidden file"]
    data = load(chest_data_cfg(root))
    assert sum(data.counts().values()) == 48
    assert not set(data.train.patients) & set(data.val.patients) and "" not in set(data.train.patients)
    assert data.shared_patients()["patients_shared_train_val"] == 0
