"""Messy real-world data: what is left out (and counted), what stops the run with one line."""

import hashlib
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pneumo_exp import UserError
from pneumo_exp.data import check, decode, load
from tests.helpers import chest_data_cfg, make_config, write_kaggle_layout, xray


def test_kaggle_zip_layout_with_nested_folder_and_macos_junk(tmp_path):
    write_kaggle_layout(tmp_path / "chest_xray")  # -> chest_xray/chest_xray/train, as the zip has it
    junk = tmp_path / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    junk.mkdir(parents=True)
    (junk / "._IM-0000-0000.jpeg").write_bytes(b"\x00\x05\x16\x07")
    data = load(chest_data_cfg(tmp_path))
    assert sum(data.counts().values()) == 48 and data.skipped == []


def test_non_images_and_unreadable_files_are_left_out_and_listed(tmp_path, monkeypatch):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    normal = root / "train" / "NORMAL"
    (normal / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (normal / "._IM-0001-0000.jpeg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (normal / "notes.txt").write_text("scanner log")
    (normal / "IM-0900-0001.jpeg").write_bytes(b"")  # zero bytes
    whole = (normal / "IM-0001-0000.jpeg").read_bytes()
    (normal / "IM-0901-0001.jpeg").write_bytes(whole[: len(whole) // 2])  # truncated JPEG
    (normal / "IM-0902-0001.jpeg").write_text("<html>404 Not Found</html>")  # not an image at all
    (normal / "IM-0903-0001.jpeg").write_bytes(whole)  # no permission to read it (chmod is moot as root)
    read_bytes = Path.read_bytes

    def denied(path):
        if path.name == "IM-0903-0001.jpeg":
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    data = load(chest_data_cfg(root))
    reasons = sorted(line.split(": ", 1)[1].split(" (")[0] for line in data.skipped)
    assert reasons == ["cannot decode", "cannot decode", "cannot read", "empty file", "hidden file",
                       "hidden file", "not a .jpeg/.jpg/.png/.dcm file"]
    assert sum(data.counts().values()) == 48  # every good image is still there


def test_png_rgb_rgba_and_grayscale_mix_and_a_very_large_image(tmp_path):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    sick = root / "train" / "PNEUMONIA"
    rng = np.random.default_rng(3)
    xray(1, rng).convert("RGB").save(sick / "person900_virus_1.png")
    xray(1, rng).convert("RGBA").save(sick / "person901_virus_1.png")
    xray(1, rng).resize((6000, 5000)).save(sick / "person902_virus_1.jpeg")  # 30 megapixels
    data = load(chest_data_cfg(root))
    assert sum(data.counts().values()) == 51 and data.skipped == []
    assert data.train.images.shape[1:] == (32, 32, 1)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_huge_text(image: Image.Image, path: Path) -> None:
    """A 2 MB compressed (zTXt) comment: past Pillow's MAX_TEXT_CHUNK, a ValueError as it loads."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 2_000_000, zip=True)
    image.save(path, pnginfo=info)


def with_broken_chunk(image: Image.Image, path: Path) -> None:
    """The image data in two IDAT chunks, the second's name damaged: a SyntaxError mid-image."""
    image.save(path)
    raw = path.read_bytes()
    start = raw.index(b"IDAT") - 4
    end = start + 12 + int.from_bytes(raw[start:start + 4], "big")
    data = raw[start + 8:end - 4]
    damaged = png_chunk(b"IDAT", data[:20]) + png_chunk(b"ID\x00T", data[20:])
    path.write_bytes(raw[:start] + damaged + raw[end:])


def as_lab_tiff(image: Image.Image, path: Path) -> None:
    """A CIELAB TIFF named .png: Pillow opens it but cannot make it grayscale (a ValueError)."""
    image.convert("RGB").convert("LAB").save(path, format="TIFF")


def test_files_that_fail_to_decode_in_unforeseen_ways_are_left_out(tmp_path):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    rng = np.random.default_rng(4)
    for i, write in enumerate((with_huge_text, with_broken_chunk, as_lab_tiff)):
        write(xray(1, rng), root / "train" / "PNEUMONIA" / f"person90{i}_virus_1.png")
    data = load(chest_data_cfg(root))
    assert sorted(line.split(": ", 1)[1] for line in data.skipped) == [
        "cannot decode (Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)",
        "cannot decode (broken PNG file (chunk b'ID\\x00T'))",
        "cannot decode (conversion from LAB to RGB not supported)"]
    assert sum(data.counts().values()) == 48  # every good image is still there


@pytest.mark.parametrize("write", [
    pytest.param(lambda image, path: image.convert("LA").save(path), id="LA"),
    pytest.param(lambda image, path: image.convert("P").save(path, transparency=0), id="P transparency"),
    pytest.param(lambda image, path: image.convert("1").save(path), id="1 bit"),
    pytest.param(lambda image, path: image.convert("CMYK").save(path, format="JPEG", quality=95),
                 id="CMYK JPEG"),
    pytest.param(lambda image, path: Image.fromarray(np.asarray(image).astype(">u2") * 257).save(
        path, format="TIFF"), id="I;16B"),
    pytest.param(lambda image, path: Image.fromarray(np.asarray(image).astype(np.int32) * 1000).save(
        path, format="TIFF"), id="I 32 bit"),
    pytest.param(lambda image, path: image.convert("F").save(path, format="TIFF"), id="F"),
    pytest.param(lambda image, path: image.save(path, save_all=True, append_images=[image.rotate(90)]),
                 id="APNG"),
    pytest.param(lambda image, path: image.save(path, format="GIF", save_all=True,
                                                append_images=[image.rotate(90)]), id="GIF"),
])
def test_images_of_unusual_modes_named_png_decode_as_their_grayscale(tmp_path, write):
    pixels = np.asarray(xray(1, np.random.default_rng(5), 64)).copy()
    pixels[0, 0], pixels[-1, -1] = 0, 255  # the full range: what stretching float or 32-bit values keeps
    source = Image.fromarray(pixels)
    source.save(tmp_path / "plain.png")
    write(source, tmp_path / "odd.png")
    images, ok, _, problems = decode([tmp_path / "plain.png", tmp_path / "odd.png"], 32)
    assert ok.all() and problems == []
    assert abs(images[1].mean() - images[0].mean()) < 3  # the first frame, not black, not inverted


def test_the_same_image_in_two_splits_is_reported(tmp_path):
    root = write_kaggle_layout(tmp_path, with_test=True) / "chest_xray"
    normal = root / "train" / "NORMAL"
    shutil.copy(normal / "IM-0003-0000.jpeg", root / "test" / "NORMAL" / "IM-0777-0000.jpeg")
    data = load(chest_data_cfg(root))
    assert len(data.duplicates) == 1
    assert "IM-0003-0000.jpeg" in data.duplicates[0] and "IM-0777-0000.jpeg" in data.duplicates[0]


def test_the_same_image_in_both_classes_stops_the_run_in_one_line(tmp_path):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    normal = root / "train" / "NORMAL" / "IM-0003-0000.jpeg"
    shutil.copy(normal, root / "val" / "PNEUMONIA" / "person999_virus_1.jpeg")
    with pytest.raises(UserError, match=r"^1 image\(s\) in both NORMAL/ and PNEUMONIA/ \(the same content\), "
                       r"first: .*IM-0003-0000.jpeg = .*person999_virus_1.jpeg: remove each"):
        load(chest_data_cfg(tmp_path))


def test_files_left_out_are_no_duplicates(tmp_path):
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    (root / "train" / "NORMAL" / "IM-0005-0009.jpeg").write_bytes(b"")
    (root / "val" / "NORMAL" / "IM-0101-0009.jpeg").write_bytes(b"")
    data = load(chest_data_cfg(tmp_path))
    assert data.duplicates == [] and len(data.skipped) == 2


def test_the_same_image_in_two_splits_of_an_npz_is_reported(tiny_npz, tmp_path):
    with np.load(tiny_npz[0]) as npz:
        arrays = dict(npz)
    arrays["test_images"][5] = arrays["train_images"][7]
    path = tmp_path / "copied.npz"
    np.savez(path, **arrays)
    data = load(make_config([f"data.path={path}", f"data.md5={hashlib.md5(path.read_bytes()).hexdigest()}",
                             "data.image_size=28"]).data)
    assert data.duplicates == ["train_images[7] = test_images[5]"]


@pytest.mark.parametrize("content, reason, fix", [
    (b"", "empty file", "replace them with readable copies"),
    (b"\x89PNG\r\n\x1a\n but no image", "cannot decode", "install what decodes them (the reason names it)"),
])
def test_a_class_with_only_unreadable_images_says_why_and_what_to_do(tmp_path, content, reason, fix):
    """Not "add NORMAL images": the images are there, and what to do depends on why they did not read."""
    root = write_kaggle_layout(tmp_path) / "chest_xray"
    for split in ("train", "val"):
        for path in (root / split / "NORMAL").iterdir():
            path.write_bytes(content)
    with pytest.raises(UserError, match=rf"^the train split has no NORMAL image left: its \d+ files are "
                                        rf"unreadable, e.g. .*NORMAL/.*: {reason}.*: {re.escape(fix)}"):
        load(chest_data_cfg(root))


def saved(change: Callable[[dict], object]) -> Callable[[Path, dict], None]:
    """Writes the tiny npz's arrays after `change`."""
    return lambda path, arrays: (change(arrays), np.savez(path, **arrays))


def cut_short(path: Path, arrays: dict) -> None:
    np.savez(path, **arrays)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def with_bad_crc(path: Path, arrays: dict) -> None:
    """An npz whose train_images member has flipped bytes (np.savez stores members uncompressed)."""
    np.savez(path, **arrays)
    content = bytearray(path.read_bytes())
    content[4000:4008] = b"\xff" * 8
    path.write_bytes(bytes(content))


def as_npy(path: Path, arrays: dict) -> None:
    with path.open("wb") as handle:
        np.save(handle, arrays["train_images"])


OBJECTS = np.array([{"label": 1}] * 40, dtype=object)  # np.savez pickles it; np.load refuses it


@pytest.mark.parametrize("write, message", [
    pytest.param(saved(lambda a: a.pop("val_labels")), r"lacks \['val_labels'\]", id="key missing"),
    pytest.param(saved(lambda a: a.update(train_images=a["train_images"].astype("float32"))),
                 r"expected \(n, height", id="float images"),
    pytest.param(saved(lambda a: a.update(test_labels=a["test_labels"][:5])), "for 5 labels",
                 id="fewer labels than images"),
    pytest.param(saved(lambda a: a.update(train_labels=a["train_labels"] * 2)), "values other than 0 and 1",
                 id="labels not 0/1"),
    pytest.param(lambda path, a: path.write_bytes(b""),
                 r"is not an npz file \(it is empty\): use an official MedMNIST", id="0 bytes"),
    pytest.param(lambda path, a: path.write_bytes(np.random.default_rng(0).bytes(4096)),
                 r"is not an npz file \(not a zip archive\): use an official MedMNIST", id="random bytes"),
    pytest.param(cut_short, r"is not an npz file \(a zip archive cut short or damaged\): use an official",
                 id="first half"),
    pytest.param(with_bad_crc, r": train_images is damaged \(Bad CRC-32 for file 'train_images.npy'\): use",
                 id="flipped bytes"),
    pytest.param(as_npy, r"holds a single array \(a .npy file\), not an npz", id="npy"),
    pytest.param(saved(lambda a: a.update(train_labels=OBJECTS)),
                 r": train_labels is not a plain array \(Object arrays cannot be loaded .*\): use an",
                 id="pickled objects"),
    pytest.param(saved(lambda a: a.update(val_images=a["val_images"][:0], val_labels=a["val_labels"][:0])),
                 r": the val split is empty \(val_images holds 0 images\): use an", id="empty split"),
    pytest.param(saved(lambda a: a.update(train_labels=np.ones_like(a["train_labels"]))),
                 r": the train split has PNEUMONIA images only: every split needs both classes",
                 id="train one class"),
    pytest.param(saved(lambda a: a.update(test_labels=np.zeros_like(a["test_labels"]))),
                 r": the test split has NORMAL images only: every split needs both classes",
                 id="test one class"),
])
def test_npz_that_is_not_pneumoniamnist_fails_before_the_store_opens(tmp_path, tiny_npz, write, message):
    # data.check runs before the store opens (run.py); load runs the same checks on its own
    path = tmp_path / "bad.npz"
    write(path, dict(np.load(tiny_npz[0])))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()  # past the md5 check, to reach the others
    cfg = make_config(["data=pneumoniamnist", f"data.path={path}", f"data.md5={md5}", "data.image_size=32"])
    for step in (check, load):
        with pytest.raises(UserError, match=message) as error:
            step(cfg.data)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
