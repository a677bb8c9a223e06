"""DICOM files to grayscale values as a viewer shows them, through pydicom: an optional extra
(pip install 'pneumo-exp[dicom]'), imported only when a DICOM file is read."""

from __future__ import annotations

import io

import numpy as np

NEEDS_PYDICOM = "DICOM needs pydicom: pip install 'pneumo-exp[dicom]'"
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as Pillow's convert("L")


class DicomError(Exception):
    """Why a DICOM file gives no image, in one line."""


def first_line(error: Exception) -> str:
    """Why a codec failed, in one line for the list of files left out: the first line of its
    message, or its type where it has none (decode.py shares it)."""
    return (str(error) or type(error).__name__).splitlines()[0]


def available() -> bool:
    """Whether pydicom is installed."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


def values(raw: bytes) -> np.ndarray:
    """The first frame as a 2-D float array, brighter = denser, on the file's own scale.

    The modality LUT (rescale slope and intercept: stored numbers to physical units), then the VOI
    LUT or window centre/width where the file has one (the contrast the modality chose for
    display), then MONOCHROME1 inverted (there the lowest value is white). A colour file
    (secondary capture) is made grayscale as the other images are. Raises DicomError.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as error:
        raise DicomError(NEEDS_PYDICOM) from error
    try:
        dataset = pydicom.dcmread(io.BytesIO(raw))
        pixels = dataset.pixel_array
        if int(dataset.get("NumberOfFrames") or 1) > 1:
            pixels = pixels[0]
        if int(dataset.get("SamplesPerPixel") or 1) > 1:
            shown = pixels[..., :3] @ LUMA
        else:
            shown = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset).astype(np.float64)
            if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
                shown = -shown
    except Exception as error:  # pydicom raises a dozen kinds on malformed or unsupported files
        raise DicomError(f"DICOM: {first_line(error)}") from error
    if shown.ndim != 2:
        raise DicomError(f"DICOM: pixel data of shape {shown.shape}, not one grayscale image")
    return shown
