"""DICOM pixel data -> uint16 array, the radiology way.

Rescale slope/intercept (modality LUT), then the VOI LUT or window
centre/width from the file (or a configured ``(centre, width)``), MONOCHROME1
inverted so that high values are bright, and the result stretched to the full
uint16 range so the 16-bit precision survives until the final normalisation
(:mod:`medcls.transforms.preprocess` min-max scales uint16 images).

Compressed transfer syntaxes are decoded by whatever pydicom pixel-data plugin
is installed (Pillow handles JPEG baseline and JPEG 2000); when none is, the
error names the file, the transfer syntax (name and UID) and the packages that
would decode it.

Patient tags are PHI: this module never reads them into a value that could be
logged. The only patient element touched is ``PatientID``, read as raw bytes
(no pydicom value validation, whose warnings would echo the value) and turned
into a keyed hash by :func:`patient_pseudonym`.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

DICM_MAGIC = b"DICM"
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
Window = tuple[float, float] | None
SALT_ENV = "MEDCLS_PATIENT_SALT"
_DEFAULT_SALT = "medcls-patient-groups-v1"
# pip names of pydicom's pixel-data plugins, for the "missing handler" message
_PLUGIN_PACKAGES = {"gdcm": "python-gdcm", "pylibjpeg": "pylibjpeg + pylibjpeg-libjpeg/-openjpeg/-rle",
                    "pyjpegls": "pyjpegls", "pillow": "pillow", "numpy": "numpy"}


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == DICM_MAGIC


def parse_window(value: Any, where: str = "option window") -> Window:
    """``'file'``/None -> None (use the file's VOI LUT/window); ``[centre, width]`` -> a tuple."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "file"):
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        try:
            c, w = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            pass
        else:
            if w > 0 and np.isfinite(c) and np.isfinite(w):
                return c, w
    raise ConfigError(f"{where} must be 'file' (VOI LUT / window from each file, else the full range) or "
                      f"[centre, width] with width > 0, got {value!r}")


def _transfer_syntax(ds) -> Any:
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _decode_error(ds, name: str, err: Exception) -> DataError:
    """Name the file, the transfer syntax and, when no plugin can decode it, the packages that would."""
    ts = _transfer_syntax(ds)
    ts_text = f"{getattr(ts, 'name', ts)} ({ts})" if ts is not None else "unknown transfer syntax"
    missing: list[str] = []
    if ts is not None:
        try:
            from pydicom.pixels import get_decoder

            decoder = get_decoder(ts)
            if not decoder.is_available:
                missing = list(getattr(decoder, "missing_dependencies", []))
        except NotImplementedError:
            return DataError(f"{name}: pydicom has no decoder for the transfer syntax {ts_text}; convert the file "
                             "to an uncompressed (Explicit VR Little Endian) DICOM or to PNG")
        except Exception:  # describing an error must not raise another one
            pass
    if missing:
        pkgs = sorted({_PLUGIN_PACKAGES.get(m.split(" ")[0], m.split(" ")[0]) for m in missing})
        return DataError(f"{name}: cannot decode DICOM pixel data compressed as {ts_text}: no installed pixel-data "
                         f"handler supports it. Install the codecs: pip install 'medcls[dicom]', or one of: {'; '.join(pkgs)} "
                         f"(pydicom plugins: "
                         f"{'; '.join(missing)})")
    return DataError(f"{name}: cannot decode DICOM pixel data ({ts_text}): {type(err).__name__}: {err}")


def _as_uint16(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return np.round((x - lo) / max(hi - lo, 1e-12) * 65535).astype(np.uint16)


def dataset_to_array(ds, name: str, window: Window = None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{name}: DICOM file has no pixel data (no (7FE0,0010) PixelData element; "
                        "is it a structured report or a presentation state?)")
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing codec plugins raise RuntimeError naming them
        raise _decode_error(ds, name, e) from None
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if arr.ndim == (4 if spp == 3 else 3):
        arr = arr[0]  # multi-frame: first frame
    if spp == 3:  # colour (pydicom converts YBR to RGB)
        if arr.dtype == np.uint8:
            return arr
        if arr.dtype.kind == "u" and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return _as_uint16(arr.astype(np.float64))
    x = apply_modality_lut(arr, ds).astype(np.float64)
    if window is not None:
        c, w = window
        x = np.clip((x - (c - w / 2)) / w, 0, 1)
    elif "WindowCenter" in ds or "VOILUTSequence" in ds:
        x = apply_voi_lut(x, ds).astype(np.float64)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1":
        x = x.max() + x.min() - x
    return _as_uint16(x)


def read_dataset(data: bytes | str | Path, name: str | None = None, *, header_only: bool = False):
    """``pydicom.dcmread`` with a :class:`DataError` naming the file (and nothing from its content)."""
    import pydicom

    src = io.BytesIO(data) if isinstance(data, bytes) else Path(data)
    name = name or (str(src) if isinstance(src, Path) else "dicom")
    try:
        return pydicom.dcmread(src, force=False, stop_before_pixels=header_only)
    except Exception as e:  # InvalidDicomError and friends
        raise DataError(f"{name}: not a readable DICOM file ({type(e).__name__})") from None


HEADER_INFLATE_LIMIT = 1 << 20  # a deflated dataset's image attributes must lie in its first 1 MiB


def _deflated_header(data: bytes, name: str):
    """The image attributes of a Deflated Explicit VR Little Endian file, inflating at most
    ``HEADER_INFLATE_LIMIT`` bytes (pydicom inflates the whole dataset, pixel data included, before it
    reads a single element: 100 KB on the wire are 100 MB in memory); None for other transfer syntaxes."""
    import zlib

    # private: pydicom's public read_file_meta_info only opens a path (this is bytes), dcmread inflates it all
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:
        raise DataError(f"{name}: not a readable DICOM file (file meta information)") from None
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    try:
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[fp.tell():], HEADER_INFLATE_LIMIT)
        return read_dataset(io.BytesIO(head), False, True, stop_when=lambda tag, *_: tag > 0x00280011)
    except Exception:
        raise DataError(f"{name}: deflated DICOM header is corrupt, or its image attributes (0028,xxxx) do not "
                        f"lie in its first {HEADER_INFLATE_LIMIT} inflated bytes") from None


def declared_pixels(data: bytes, name: str = "dicom") -> int:
    """Rows x Columns x NumberOfFrames as the header declares them, read without touching the pixel data
    (a few KB of deflate can declare gigabytes: bound it before decoding)."""
    ds = _deflated_header(data, name)
    if ds is None:
        ds = read_dataset(data, name, header_only=True)
    try:
        return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except Exception:  # pydicom converts values lazily: a corrupt element raises whatever its VR's parser does
        raise DataError(f"{name}: DICOM header has unreadable or non-numeric Rows/Columns/NumberOfFrames") from None


def decode_dicom(data: bytes, name: str = "dicom", *, window: Window = None) -> np.ndarray:
    return dataset_to_array(read_dataset(data, name), name, window)


def read_dicom(path: str | Path, *, window: Window = None) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"DICOM file not found: {p}")
    return decode_dicom(p.read_bytes(), str(p), window=window)


def raw_patient_id(ds) -> bytes | None:
    """PatientID (0010,0020) as raw bytes, without pydicom's value conversion/validation; None if absent or blank."""
    tag = 0x00100020
    if tag not in ds:
        return None
    elem = ds.get_item(tag)
    value = elem.value
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    raw = raw.strip(b" \x00")
    return raw or None


def patient_pseudonym(raw: bytes, salt: str | None = None) -> str:
    """A keyed hash of a patient id: equal ids give equal pseudonyms; the id itself is never stored.

    The key is ``salt``, else ``$MEDCLS_PATIENT_SALT``, else a built-in constant. Use a secret salt when
    the pseudonyms leave your site: with the public constant, short ids could be recovered by brute force.
    """
    key = (salt if salt is not None else os.environ.get(SALT_ENV) or _DEFAULT_SALT).encode()
    return "pt-" + hashlib.blake2b(raw, key=key[:64], digest_size=8).hexdigest()
