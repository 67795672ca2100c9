"""PNG completeness: Pillow fills the rows missing from a truncated PNG with zeros when its zlib stream ends
cleanly, so a file whose header declares 300,000 rows but holds 4 decodes "fine". This counts the bytes the
IDAT stream really holds against what the header declares, streaming (constant memory), before decoding."""

from __future__ import annotations

import struct
import zlib

from ..errors import DataError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _row_bytes(width: int, channels: int, depth: int) -> int:
    return 1 + (width * channels * depth + 7) // 8  # one filter byte per row


def expected_bytes(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Decompressed size of the image data the header declares (filter bytes included)."""
    ch = CHANNELS.get(colour, 1)
    if not interlace:
        return height * _row_bytes(width, ch, depth)
    total = 0
    for x0, y0, dx, dy in ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * _row_bytes(w, ch, depth)
    return total


def check_complete(data: bytes, name: str) -> None:
    """Raise :class:`DataError` when the PNG's image data is shorter than its header declares."""
    if not data.startswith(SIGNATURE) or len(data) < 33:
        return
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    want, got, pos = expected_bytes(width, height, depth, colour, interlace), 0, 8
    inflate = zlib.decompressobj()
    while pos + 8 <= len(data) and got < want:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            chunk = data[pos + 8:pos + 8 + length]
            while chunk and got < want:
                try:
                    got += len(inflate.decompress(chunk, 1 << 20))
                except zlib.error as e:
                    raise DataError(f"{name}: corrupt PNG: its image data does not decompress ({e})") from None
                chunk = inflate.unconsumed_tail
        pos += 12 + length
    if got < want:
        raise DataError(f"{name}: truncated PNG: its header declares {width}x{height} pixels but the image data "
                        f"holds {got} of {want} bytes")
