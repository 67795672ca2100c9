"""What a folder scan learns about an image file from its header alone: size, channels, format.

Decoding a 1-2 MP radiograph costs ~10 ms; its header, a few hundred bytes. Pillow's ``Image.open`` is lazy
(size and mode without ``load()``), DICOM is read with ``stop_before_pixels``, and the two ways a download
usually breaks are caught from the file's end: a truncated JPEG has no end-of-image marker, a truncated PNG
no ``IEND`` chunk. What only a decode finds (damage in the middle of the compressed data) surfaces when the
image is first read, with the file named (or at scan time with ``options.verify: decode``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

TAIL = 1024  # bytes searched for the end marker: encoders may pad after it
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L"}


@dataclass(frozen=True)
class ImageInfo:
    """An image file's header: ``width`` x ``height`` pixels, ``channels`` 1 (gray) or 3, ``format``."""

    width: int
    height: int
    channels: int
    format: str


def _tail(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - TAIL))
        return f.read()


def _palette_channels(img) -> int:
    """1 when every palette entry is gray (as :func:`medcls.data.images.read_image` decodes it), else 3."""
    pal = img.getpalette() or []
    return 1 if all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3)) else 3


def _probe_dicom(path: Path) -> ImageInfo:
    from .dicom import read_dataset

    ds = read_dataset(path, str(path), header_only=True)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise DataError(f"{path}: DICOM file without image (no Rows/Columns)")
    return ImageInfo(int(cols), int(rows), 3 if int(ds.get("SamplesPerPixel", 1)) >= 3 else 1, "DICOM")


def probe_image(path: str | Path) -> ImageInfo:
    """Read ``path``'s header (never its pixels). Raises :class:`DataError` naming the file when it is
    missing, empty, not an image, or visibly truncated."""
    from PIL import Image, UnidentifiedImageError

    from .dicom import is_dicom

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image not found")
    with p.open("rb") as f:
        head = f.read(132)
    if not head:
        raise DataError(f"{p}: empty file")
    if is_dicom(head):
        return _probe_dicom(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:  # lazy: parses the header only
                size, mode, fmt = img.size, img.mode, img.format or "?"
                if mode == "F":
                    raise DataError(f"{p}: floating-point images are not supported (expected 8- or 16-bit)")
                channels = _palette_channels(img) if mode in ("P", "PA") else 1 if mode in GRAY_MODES else 3
    except UnidentifiedImageError:
        raise DataError(f"{p}: cannot decode image: not a PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{p}: cannot decode image ({type(e).__name__}: {e})") from None
    end = {"JPEG": (b"\xff\xd9", "truncated JPEG: no end-of-image marker"),
           "PNG": (b"IEND", "truncated PNG: no IEND chunk")}.get(fmt)
    if end and end[0] not in _tail(p):
        _decodes_or(p, end[1])
    return ImageInfo(size[0], size[1], channels, fmt)


def _decodes_or(path: Path, problem: str) -> None:
    """The end marker is missing: decode this one file to tell a cut-off download (raise ``problem``) from
    a complete image followed by more than ``TAIL`` bytes of trailer (some cameras append data)."""
    from .images import read_image

    try:
        read_image(path)
    except DataError:
        raise DataError(f"{path}: {problem}") from None
