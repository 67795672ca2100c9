"""Reading images from disk or bytes into numpy arrays, keeping 16-bit precision."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm"}


def _from_pil(img, name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint16:
            if arr.min() < 0 or arr.max() > 65535:
                raise DataError(f"{name}: 32-bit integer image with values outside 0..65535")
            arr = arr.astype(np.uint16)
        return arr
    if mode == "F":
        raise DataError(f"{name}: floating-point images are not supported (expected 8- or 16-bit)")
    if mode in ("P", "PA"):  # palette: gray if the palette is gray, else RGB
        rgb = np.asarray(img.convert("RGB"))
        gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return np.ascontiguousarray(rgb[..., 0]) if gray else rgb
    if mode in ("1", "L", "LA"):
        arr = np.asarray(img.convert("L"))
        return arr
    if mode in ("RGBA", "RGBa"):
        return np.asarray(img.convert("RGBA"))[..., :3]
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, name: str = "image", *, draft: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (PNG/JPEG/TIFF/BMP/..., or DICOM) into (H, W) or (H, W, 3) uint8/uint16.

    ``draft``: the size the image will be resized to. A JPEG larger than twice that is decoded at a reduced
    scale (libjpeg's DCT scaling, 1/2 to 1/8, never below ``draft`` on either side), which is several times
    faster for full-size radiographs and the same low-pass a resize would apply. Only artefacts whose
    preprocessing says so use it (``PreprocessConfig.jpeg_draft``), so training and serving decode alike.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DataError(f"{name}: empty file")
    from .dicom import decode_dicom, is_dicom

    if is_dicom(data):
        return decode_dicom(data, name)
    from .png import check_complete

    check_complete(data, name)  # Pillow would zero-fill the missing rows
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if draft and img.format == "JPEG" and min(img.size) >= 2 * draft:
                img.draft(img.mode, (draft, draft))
            img.load()
            return _from_pil(img, name)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        if isinstance(e, DataError):
            raise
        if isinstance(e, UnidentifiedImageError):  # its text names the in-memory stream, not the file
            raise DataError(f"{name}: cannot decode image: not a PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM file") from None
        raise DataError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def read_image(path: str | Path, *, draft: int | None = None) -> np.ndarray:
    """Read an image file into (H, W) or (H, W, 3), uint8 or uint16. Raises DataError if unreadable."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a directory, not an image file")
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    return decode_image(p.read_bytes(), str(p), draft=draft)
