"""Untrusted request parts: the uploaded image (sniffed by content, bounded before decoding) and the
``metadata`` JSON form field."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
from fastapi import HTTPException, UploadFile

from ..errors import DataError
from .errors import busy
from .settings import ServeSettings

T = TypeVar("T")

SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
              (b"BM", "bmp"))


def sniff(data: bytes) -> str | None:
    """The format by content (never by file name): png, jpeg, tiff, bmp, dicom, or None."""
    from ..data.dicom import is_dicom

    if is_dicom(data):
        return "dicom"
    return next((kind for sig, kind in SIGNATURES if data.startswith(sig)), None)


def _check_header(data: bytes, kind: str, max_pixels: int) -> int:
    """Image dimensions from the header, before any decoding (decompression bombs); returns the pixels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"image refused as a decompression bomb: {e} (limit {max_pixels} pixels)") from None
    except Exception:
        raise HTTPException(422, f"cannot read the {kind.upper()} header: the file is corrupt or truncated") from None
    if w * h > max_pixels:
        raise HTTPException(413, f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
    return w * h


def _check_dicom_header(data: bytes, max_pixels: int) -> int:
    """Rows x Columns x frames from the DICOM header, before any pixel data is decompressed."""
    from ..data.dicom import declared_pixels

    try:
        n = declared_pixels(data, "upload")
    except DataError as e:
        raise HTTPException(422, str(e)) from None
    if n > max_pixels:
        raise HTTPException(413, f"DICOM header declares {n} pixels (rows x columns x frames), more than the limit "
                            f"of {max_pixels}")
    return n


class PixelBudget:
    """At most ``capacity`` pixels decoded and preprocessed at once, over all requests: a burst of large
    valid images waits its turn instead of exhausting memory (the request count alone does not bound it).
    At most ``queue`` pixels wait (default 4 x capacity); an image that would wait beyond that gets 503 with
    Retry-After, so a flood of large images is shed before it holds the places of small ones."""

    def __init__(self, capacity: int, queue: int | None = None) -> None:
        self.capacity, self.used, self.waiting = capacity, 0, 0
        self.queue = 4 * capacity if queue is None else queue
        self._free = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int):
        pixels = min(pixels, self.capacity)
        async with self._free:
            if self.used + pixels > self.capacity and self.waiting + pixels > self.queue:
                raise busy(f"{self.waiting} pixels already wait to be decoded (limit {self.queue})")
            self.waiting += pixels
            try:
                await self._free.wait_for(lambda: self.used + pixels <= self.capacity)
            finally:
                self.waiting -= pixels
            self.used += pixels
        try:
            yield
        finally:
            async with self._free:
                self.used -= pixels
                self._free.notify_all()


async def _checked_bytes(file: UploadFile, settings: ServeSettings) -> tuple[bytes, int]:
    """The upload's bytes and the pixels its header declares; 4xx for anything that is not a usable image."""
    data = await file.read(settings.max_upload_bytes + 1)
    return data, check_image_bytes(data, settings)


def check_image_bytes(data: bytes, settings: ServeSettings, what: str = "upload") -> int:
    """The pixels an encoded image's header declares; 4xx for anything that is not a usable image."""
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"{what} larger than {settings.max_upload_bytes} bytes")
    if not data:
        raise HTTPException(400, f"empty {what}: expected a PNG, JPEG, TIFF, BMP or DICOM image")
    kind = sniff(data)
    if kind is None:
        raise HTTPException(415, f"{what}: unsupported or unrecognised format (checked by content, not name): "
                            "expected PNG, JPEG, TIFF, BMP or DICOM")
    if kind == "dicom":
        return _check_dicom_header(data, settings.max_pixels)
    return _check_header(data, kind, settings.max_pixels)


def _decode(data: bytes, name: str, max_pixels: int, then: Callable[[np.ndarray], T] | None,
            draft: int | None) -> np.ndarray | T:
    from ..data.images import decode_image

    try:
        img = decode_image(data, name, draft=draft)
        if img.size > max_pixels * 3:
            raise HTTPException(413, f"image has more than {max_pixels} pixels")
        return img if then is None else then(img)
    except DataError as e:
        raise HTTPException(422, str(e)) from None


async def read_upload(file: UploadFile, settings: ServeSettings, budget: PixelBudget,
                      then: Callable[[np.ndarray], T] | None = None, draft: int | None = None) -> np.ndarray | T:
    """The decoded image of an upload, or ``then(image)`` (its preprocessing, say), computed in a worker
    thread within ``budget``; 4xx with one line for anything that is not a usable image. ``draft``: the
    model's ``Preprocess.draft``, so a JPEG is decoded as in training."""
    data, pixels = await _checked_bytes(file, settings)
    return await decode_checked(data, pixels, file.filename or "upload", settings, budget, then, draft)


async def decode_checked(data: bytes, pixels: int, name: str, settings: ServeSettings, budget: PixelBudget,
                         then: Callable[[np.ndarray], T] | None = None, draft: int | None = None) -> np.ndarray | T:
    """Decode bytes already checked by :func:`check_image_bytes` (``pixels``), within the pixel budget."""
    async with budget.hold(pixels):
        return await asyncio.to_thread(_decode, data, name, settings.max_pixels, then, draft)


MAX_METADATA_CHARS = 64 * 1024
MAX_METADATA_DEPTH = 8


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, counted only up to ``limit + 1``."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in children), default=0)


def _json_field(raw: str, example: str) -> Any:
    """A bounded JSON form field: its size first, then its nesting."""
    if len(raw) > MAX_METADATA_CHARS:
        raise HTTPException(413, f"metadata is {len(raw)} characters, more than the limit of {MAX_METADATA_CHARS}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise HTTPException(422, f"metadata must be {example}: {e}") from None
    except RecursionError:  # thousands of nested brackets reach the parser's own depth limit
        value = RecursionError
    if value is RecursionError or _depth(value, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        raise HTTPException(422, f"metadata must be {example}, nested at most {MAX_METADATA_DEPTH} levels deep")
    return value


def parse_metadata(raw: str | None) -> dict[str, Any] | None:
    """The ``metadata`` form field: a JSON object of the model's expected keys (and its text column)."""
    if raw is None or not raw.strip():
        return None
    meta = _json_field(raw, 'a JSON object such as {"age": 42}')
    if not isinstance(meta, dict):
        raise HTTPException(422, f"metadata must be a JSON object, got {type(meta).__name__}")
    return meta


def parse_batch_metadata(raw: str | None, n: int) -> list[dict[str, Any] | None]:
    """The batch ``metadata`` field: a JSON array of ``n`` objects or nulls (null = no metadata for that file)."""
    if raw is None or not raw.strip():
        return [None] * n
    metas = _json_field(raw, 'a JSON array with one object (or null) per file, such as [{"age": 42}, null]')
    if not isinstance(metas, list) or len(metas) != n:
        got = f"an array of {len(metas)}" if isinstance(metas, list) else type(metas).__name__
        raise HTTPException(422, f"metadata must be a JSON array of {n} object(s) or null(s), one per file in "
                            f"order; got {got}")
    for i, m in enumerate(metas):
        if m is not None and not isinstance(m, dict):
            raise HTTPException(422, f"metadata[{i}] must be a JSON object or null, got {type(m).__name__}")
    return metas
