"""Image files to grayscale uint8 arrays of one size: decoded on all cores, each failure a reason."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
DECODER_VERSION = 1  # part of the cache key: bump when decoding or resizing changes


def resize(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale, square `size` x `size` uint8 array (bilinear, as the notebook's tf.image.resize)."""
    return np.asarray(image.convert("L").resize((size, size), Image.BILINEAR))


def as_medmnist(image: Image.Image, size: int) -> Image.Image:
    """The image as MedMNIST made its npz files: the centre square, resized to `size` (bilinear).
    Checked on the 16 Kermany val images, which MedMNIST put in PneumoniaMNIST's train/val: each
    comes out within a mean of 2-5 grey levels of its npz image, the next closest 10 or more away
    (squashed instead of cropped: 23 on average)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.convert("L").crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


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
        with Image.open(io.BytesIO(raw)) as image:
            if source_size:  # from the full image, as MedMNIST did
                return resize(as_medmnist(image, source_size), size), digest, ""
            image.draft("L", (size, size))  # JPEG: decode at a reduced scale when it is large
            return resize(image, size), digest, ""
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        return None, digest, f"cannot decode ({error})"


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
