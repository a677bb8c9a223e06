"""Image files to grayscale uint8 arrays of one size: decoded on all cores, each failure a reason.
JPEG and PNG through Pillow (8-bit as stored, deeper PNGs scaled to 8 bits, EXIF orientation
applied), DICOM through pydicom (see dicom.py)."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumo_exp.data import dicom

SUFFIX_LIST = ".jpeg/.jpg/.png/.dcm"  # what messages name
IMAGE_SUFFIXES = set(SUFFIX_LIST.split("/"))
DECODER_VERSION = 2  # part of the cache key: bump when decoding or resizing changes
# What decodes an image besides this module: a codec installed or upgraded (pyjpegls for JPEG-LS
# DICOMs, say) changes what decodes, so the decoded-image cache is keyed on their versions too, and
# files it could not read before are read again.
CODECS = ("pillow", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
          "pyjpegls", "python-gdcm")
DEEP_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}  # Pillow's 16-bit, 32-bit and float grayscale
DETECTOR_BITS = (8, 10, 12, 14, 16)  # what X-ray detectors and their exports store per pixel


def decoders() -> str:
    """The decoding code's version and each codec's installed version ("-" where it is not): what
    the decoded-image cache's key holds, beside the files."""
    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return f"{DECODER_VERSION}|" + ",".join(f"{name}={installed(name)}" for name in CODECS)


def resize(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale, square `size` x `size` uint8 array (bilinear, as the notebook's tf.image.resize)."""
    gray = image if image.mode == "L" else image.convert("L")  # convert("L") of an L image copies it
    return np.asarray(gray.resize((size, size), Image.BILINEAR))


def as_medmnist(image: Image.Image, size: int) -> Image.Image:
    """The image as MedMNIST made its npz files: the centre square, resized to `size` (bilinear).
    Checked on the 16 Kermany val images, which MedMNIST put in PneumoniaMNIST's train/val: each
    comes out within a mean of 2-5 grey levels of its npz image, the next closest 10 or more away
    (squashed instead of cropped: 23 on average)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.convert("L").crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def stretch(values: np.ndarray) -> Image.Image:
    """Values min-max scaled to an 8-bit image: the lowest black, the highest white."""
    low, high = float(np.min(values)), float(np.max(values))
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grayscale image as 8 bits.

    Integer values are divided by the top of the smallest detector bit depth (DETECTOR_BITS) that
    holds the brightest pixel, not stretched to their own range: an 8-bit X-ray saved as a 16-bit
    PNG (values x 257) comes back exactly as the 8-bit file would, with its contrast; a 12-bit
    image stored in 16 bits (top 4095, common in hospital exports) is not left near-black. Only an
    8-bit image saved x 257 whose brightest pixel is below 64 would come back brightened. Negative,
    wider or float values have no declared scale: they are min-max stretched (`stretch`).
    """
    values = np.asarray(image)
    if values.dtype.kind == "f" or values.min() < 0 or values.max() >= 2**16:
        return stretch(values.astype(np.float64))
    top = next(2**bits - 1 for bits in DETECTOR_BITS if values.max() < 2**bits)
    return Image.fromarray(np.round(values * (255 / top)).astype(np.uint8))


def _open(path: Path, raw: bytes, draft_size: int) -> Image.Image:
    """The file as an 8-bit grayscale Pillow image, upright and decoded whole: 8-bit images as
    stored (any mode, made grayscale), deeper ones scaled (`to_8bit`), DICOM (by suffix or its DICM
    marker) windowed (dicom.py) and min-max stretched: its values are in detector or physical units
    with no fixed 8-bit scale. draft_size: let a JPEG decode at a reduced scale that still covers it."""
    if path.suffix.lower() == ".dcm" or raw[128:132] == b"DICM":
        return stretch(dicom.values(raw))
    image = Image.open(io.BytesIO(raw))
    if draft_size:
        image.draft("L", (draft_size, draft_size))
    ImageOps.exif_transpose(image, in_place=True)  # phones and some scanners store it turned
    return to_8bit(image) if image.mode in DEEP_MODES else image.convert("L")


def _read(path: Path, size: int, source_size: int = 0) -> tuple[np.ndarray | None, str, str]:
    """(pixels or None, md5 of the file's bytes, why it could not be used); with source_size,
    made `as_medmnist` at that size first, as a model trained on such an npz saw its images."""
    try:
        raw = path.read_bytes()
    except OSError as error:  # no permission, vanished, an I/O error
        return None, "", f"cannot read ({error.strerror})"
    digest = hashlib.md5(raw).hexdigest()
    if not raw:
        return None, digest, "empty file"
    try:
        image = _open(path, raw, 0 if source_size else size)  # from the full image, as MedMNIST did
    except MemoryError:  # the machine's, not the file's: never to be cached as unreadable
        raise
    except Exception as error:  # codecs raise all kinds on odd files (ValueError, SyntaxError, ...)
        return None, digest, f"cannot decode ({dicom.first_line(error)})"
    if source_size:
        return resize(as_medmnist(image, source_size), size), digest, ""
    return resize(image, size), digest, ""


def decode(files: list[Path], size: int, source_size: int = 0
           ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Decode and resize every file once, on all cores (Pillow releases the GIL); with source_size,
    through an npz-sized image first (see `_read`).

    Returns the images that decoded, a mask of which files they are, the md5 of every file, and
    "path: why" for each file that did not decode (empty, truncated, corrupt, not an image).
    """
    with ThreadPoolExecutor() as pool:
        results = list(pool.map(lambda p: _read(p, size, source_size), files))
    keep = np.array([pixels is not None for pixels, _, _ in results], dtype=bool)
    images = [pixels for pixels, _, _ in results if pixels is not None]
    stacked = np.stack(images)[..., None] if images else np.zeros((0, size, size, 1), np.uint8)
    problems = [f"{path}: {why}" for path, (_, _, why) in zip(files, results, strict=True) if why]
    return stacked, keep, [digest for _, digest, _ in results], problems
