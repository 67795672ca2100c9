"""DICOM pixel data -> uint16 array, the radiology way.

Rescale slope/intercept (modality LUT), then the VOI LUT or window
centre/width from the file (or given), MONOCHROME1 inverted so that high
values are bright, and the result stretched to the full uint16 range so the
16-bit precision survives until the final normalisation. Patient tags are never
read into logs or messages.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import DataError

DICM_MAGIC = b"DICM"


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == DICM_MAGIC


def _dataset_to_array(ds, name: str, window: tuple[float, float] | None = None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds:
        raise DataError(f"{name}: DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing codec plugins raise RuntimeError naming them
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise DataError(f"{name}: cannot decode DICOM pixel data (transfer syntax "
                        f"{getattr(ts, 'name', ts)}): {e}") from None
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    if ds.get("SamplesPerPixel", 1) == 3:
        return np.asarray(arr).astype(np.uint8) if arr.dtype != np.uint8 else arr
    x = apply_modality_lut(arr, ds).astype(np.float64)
    if window is not None:
        c, w = window
        x = np.clip((x - (c - w / 2)) / max(w, 1e-6), 0, 1)
    elif "WindowCenter" in ds or "VOILUTSequence" in ds:
        x = apply_voi_lut(x, ds).astype(np.float64)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        x = x.max() + x.min() - x
    lo, hi = float(x.min()), float(x.max())
    return np.round((x - lo) / max(hi - lo, 1e-12) * 65535).astype(np.uint16)


def decode_dicom(data: bytes, name: str = "dicom", *, window: tuple[float, float] | None = None) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception as e:  # InvalidDicomError and friends
        raise DataError(f"{name}: not a readable DICOM file ({type(e).__name__})") from None
    return _dataset_to_array(ds, name, window)


def read_dicom(path: str | Path, *, window: tuple[float, float] | None = None) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"DICOM file not found: {p}")
    return decode_dicom(p.read_bytes(), str(p), window=window)
