"""``medcls data check``: a data report that finds leakage between the source's own splits.

Every checked image is decoded once and reduced to three fingerprints:

* the **pixel key**, a BLAKE2 hash of the decoded array (dtype, shape, bytes): equal keys are
  *exact duplicates*;
* its **canonical gray 8-bit version** (RGB -> luma, 16-bit -> per-image min-max), downscaled to a
  32x32 thumbnail (Lanczos), and the 64-bit **perceptual hash** of that thumbnail: the signs of its
  8x8 lowest DCT frequencies against their median, bit for bit ``imagehash.phash`` of the gray image.

**Near duplicates** are pairs at phash Hamming distance <= ``max_distance`` (default 6 of 64 bits)
whose thumbnails correlate (Pearson) >= ``min_correlation`` (default 0.99) and whose pixels differ.
Both thresholds come from measurements (``tests/data/test_check.py`` re-checks the planted cases):

* 7,000 copies of 1,000 PneumoniaMNIST images rendered at 128 px (JPEG q95) — resized to 96 or
  64 px, re-encoded as JPEG q70 or q50, resized to 80 px + JPEG q70, saved as RGB JPEG, brightness
  x1.1+10: phash distance 0 for 83.0% of the copies, 2 for 16.6%, 4 for 0.5%, never more;
  thumbnail correlation >= 0.9937 (>= 0.9913 with the brightness change);
* distinct images, all 17.1 million pairs of the 5,856 PneumoniaMNIST images: 255 pairs at distance
  <= 4 and 2,195 at <= 6 — a 64-bit phash alone cannot tell a copy from another chest X-ray — but
  the highest thumbnail correlation of two distinct images is 0.9746.

phash distances are even (32 of the 64 bits are set unless DCT values tie), so 6 is one step above the largest
distance measured for a copy, and 0.99 lies between 0.9746 and 0.9913. Crops are not near
duplicates here: 2 pixels off a 128 px image move phash by up to 12 and correlation down to 0.945.

Pairs at distance <= D are found by multi-index hashing (pigeonhole): the 64 bits are split into
``m`` interleaved chunks; two hashes within D differ in at most ``D // m`` bits of some chunk, so
candidates are pairs whose chunk keys are within that radius (enumerated as bit flips, bucket by
bucket, in fixed-size numpy batches), then filtered by the full distance. Memory is one 32x32
thumbnail (1 KiB) per image; ``max_images`` samples evenly within each split to cap the work.
The search over 300,000 hashes takes 10 s (uniform bits) to 31 s (bits biased like chest X-ray
hashes) on one CPU core; decoding the images costs more.

On the real PneumoniaMNIST (default settings) the check finds the 8 val images that are exact
copies of 10 train images (10 pairs; 8 duplicate groups), none between train/test or val/test,
18 duplicate pairs inside train and 3 inside test, and no near duplicates.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from ..sources import SOURCES, SPLITS, SourceData, call_source, parse_source
from ..table import FileTable, H5Table, ImageTable
from .summary import DataReport, Scanned, summarise

log = logging.getLogger(__name__)

MAX_DISTANCE = 6
MIN_CORRELATION = 0.99
THUMB = 32
FILE_MODES = {"1": "binary", "L": "gray", "LA": "gray+alpha", "I": "gray", "I;16": "gray", "I;16B": "gray",
              "I;16L": "gray", "P": "palette", "PA": "palette", "RGB": "RGB", "RGBA": "RGBA", "CMYK": "CMYK",
              "YCbCr": "YCbCr", "F": "float"}


# ----------------------------------------------------------------------------------------------- per image

def _gray8(arr: np.ndarray):
    """Canonical gray 8-bit PIL image of a decoded (H, W[, C]) uint8/uint16 array."""
    from PIL import Image

    a = arr[..., :3] if arr.ndim == 3 and arr.shape[-1] >= 3 else (arr[..., 0] if arr.ndim == 3 else arr)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(a))
    return img.convert("L") if a.ndim == 3 else img


def fingerprint(arr: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(pixel key, 32x32 uint8 canonical gray thumbnail) of one decoded image; see :func:`phash64`."""
    from PIL import Image

    arr = np.ascontiguousarray(arr)
    h = hashlib.blake2b(f"{arr.dtype.str}{arr.shape}".encode(), digest_size=16)
    h.update(arr.data)
    thumb = _gray8(arr).resize((THUMB, THUMB), Image.Resampling.LANCZOS)  # as imagehash.phash resizes
    return h.digest(), np.asarray(thumb, dtype=np.uint8).ravel()


def phash64(thumbs: np.ndarray, batch: int = 8192) -> np.ndarray:
    """``imagehash.phash`` (hash_size 8) of many 32x32 gray thumbnails at once, as uint64.

    Same steps as imagehash 4.3 (2-D DCT-II with ``scipy.fftpack``, 8x8 lowest frequencies, bits
    above their median, row-major); tests check it bit for bit against ``imagehash.phash``. Batched
    because one call per image costs ~1 ms, 5 minutes for 300k images.
    """
    from scipy.fftpack import dct

    out = np.zeros(len(thumbs), np.uint64)
    for lo in range(0, len(thumbs), batch):
        x = thumbs[lo:lo + batch].reshape(-1, THUMB, THUMB).astype(np.float64)
        low = dct(dct(x, axis=1), axis=2)[:, :8, :8].reshape(len(x), 64)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[lo:lo + batch] = np.packbits(bits, axis=1).view(">u8")[:, 0]
    return out


def _read(table: ImageTable, i: int) -> tuple[np.ndarray, str | None]:
    """Decode image ``i`` and the PIL mode of its file (``None`` for arrays and DICOM)."""
    if not isinstance(table, FileTable):
        return table.load(i), None
    from PIL import Image

    from ..images import decode_image

    path = table.paths[i]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({type(e).__name__}: {e})") from None
    arr = decode_image(data, str(path))
    try:
        mode = Image.open(io.BytesIO(data)).mode
    except Exception:  # DICOM or exotic formats: described from the array
        mode = None
    return arr, mode


def _scan_one(table: ImageTable, i: int) -> tuple:
    try:
        arr, mode = _read(table, i)
    except (DataError, OSError) as e:
        return ("error", str(e))
    kind = FILE_MODES.get(mode, mode) if mode else ("gray" if arr.ndim == 2 else "RGB")
    if kind == "RGB" and arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        kind = "RGB (gray content)"
    bits = {"1": 1, "I": 32}.get(mode or "", arr.dtype.itemsize * 8)
    return ("ok", kind, bits, arr.shape[:2], *fingerprint(arr))  # (..., pixel key, thumbnail)


def _scan(table: ImageTable, idx: np.ndarray, workers: int, split: str) -> list[tuple]:
    blocks = [idx[k:k + 128] for k in range(0, len(idx), 128)]

    def work(block):
        return [_scan_one(table, int(i)) for i in block]

    if workers <= 1 or isinstance(table, H5Table) or len(blocks) <= 1:  # h5py reads are serialised anyway
        out = [work(b) for b in blocks]
    else:
        with ThreadPoolExecutor(workers) as ex:
            out = list(ex.map(work, blocks))
    log.debug("checked %d %s images", len(idx), split)
    return [r for block in out for r in block]


# ----------------------------------------------------------------------------------------------- pair search

def _chunking(max_distance: int) -> tuple[int, int]:
    """(chunks m, radius r) with m * (r + 1) > D: long chunks (few false candidates) and r <= 2 flips."""
    m = max_distance + 1 if max_distance <= 2 else max(3, math.ceil((max_distance + 1) / 3))
    return m, max_distance // m


def _expand(order, start, cnt, a, b, same: bool, batch: int = 1 << 22):
    """Yield (i, j) for every member pair of bucket pairs (a[k], b[k]), ``batch`` pairs at a time."""
    if len(a) == 0:
        return
    sizes = cnt[a] * cnt[b]
    cum = np.cumsum(sizes)
    for lo in range(0, int(cum[-1]), batch):
        t = np.arange(lo, min(lo + batch, int(cum[-1])), dtype=np.int64)
        q = np.searchsorted(cum, t, side="right")
        p, s = np.divmod(t - (cum[q] - sizes[q]), cnt[b][q])
        if same:
            keep = p < s
            q, p, s = q[keep], p[keep], s[keep]
        yield order[start[a][q] + p], order[start[b][q] + s]


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of 64-bit hashes at Hamming distance <= ``max_distance``: (i, j, distance)."""
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    if n > 1:
        bits = np.unpackbits(h.view(np.uint8).reshape(n, 8), axis=1, bitorder="little")  # bit k of byte k//8
        m, r = _chunking(max_distance)
        for c in range(m):
            sel = np.arange(c, 64, m)
            keys = bits[:, sel].astype(np.int64) @ (np.int64(1) << np.arange(len(sel), dtype=np.int64))
            uk, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
            order = np.argsort(inv, kind="stable")
            start = np.cumsum(cnt) - cnt
            flips = [sum(1 << b for b in comb) for k in range(1, r + 1) for comb in combinations(range(len(sel)), k)]
            if flips:  # r >= 1 implies m >= 3: keys have <= 22 bits, a dense bucket lookup table fits
                lut = np.full(1 << len(sel), -1, dtype=np.int32)
                lut[uk] = np.arange(len(uk), dtype=np.int32)
            for f in [0, *flips]:
                if f == 0:
                    a = b = np.flatnonzero(cnt > 1)
                else:
                    partner = uk ^ f
                    a = np.flatnonzero(uk < partner)
                    b = lut[partner[a]]
                    a, b = a[b >= 0], b[b >= 0]
                for i, j in _expand(order, start, cnt, a, b, same=f == 0):
                    keep = np.bitwise_count(h[i] ^ h[j]) <= max_distance
                    found.append((i[keep], j[keep]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = (np.concatenate(x) for x in zip(*found, strict=True))
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(lo * n + hi, return_index=True)
    lo, hi = lo[first], hi[first]
    return lo, hi, np.bitwise_count(h[lo] ^ h[hi]).astype(np.int64)


def thumb_correlation(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Pearson correlation of thumbnail rows ``i`` and ``j`` (0 when one of them is constant)."""
    out = np.zeros(len(i), np.float64)
    for lo in range(0, len(i), batch):
        a = thumbs[i[lo:lo + batch]].astype(np.float64)
        b = thumbs[j[lo:lo + batch]].astype(np.float64)
        a -= a.mean(1, keepdims=True)
        b -= b.mean(1, keepdims=True)
        den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
        out[lo:lo + batch] = np.divide((a * b).sum(1), den, out=np.zeros(len(a)), where=den > 0)
    return out


# ----------------------------------------------------------------------------------------------- report

def _sample(n: int, total: int, max_images: int | None) -> np.ndarray:
    if max_images is None or total <= max_images:
        return np.arange(n)
    quota = max(1, int(max_images * n / total))
    return np.unique(np.linspace(0, n - 1, min(quota, n)).round().astype(np.int64))


def _samples(tables: dict[str, ImageTable], rows: dict[str, np.ndarray], classes: tuple[str, ...],
             k: int) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for s, t in tables.items():
        lab = np.asarray(t.labels)[rows[s]]
        out[s] = {}
        for c, name in enumerate(classes):
            mine = rows[s][(lab[:, c] > 0) if lab.ndim == 2 else (lab == c)]
            pick = mine[np.unique(np.linspace(0, len(mine) - 1, min(k, len(mine))).round().astype(np.int64))]
            out[s][name] = [int(x) for x in pick] if len(mine) else []
    return out


def _check_settings(max_images, max_distance, min_correlation) -> None:
    if not isinstance(max_distance, int) or not 0 <= max_distance <= 16:
        raise ConfigError(f"max_distance must be an integer number of phash bits in 0..16, got {max_distance!r}")
    if not 0 < min_correlation <= 1:
        raise ConfigError(f"min_correlation must be in (0, 1], got {min_correlation!r}")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be >= 1, got {max_images!r}")


def _load_source(source: str, opts: dict, data_dir) -> tuple[SourceData, dict[str, ImageTable], list[str]]:
    """The source with unreadable files kept (the scan lists them), its non-empty splits and its warnings."""
    kind, arg = parse_source(source)
    call = dict(opts)
    if "verify" in inspect.signature(SOURCES.get(kind)).parameters and "verify" not in call:
        call["verify"] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src: SourceData = call_source(kind, arg, None if data_dir is None else str(data_dir), call)
    tables = {s: t for s in SPLITS if (t := src.splits.get(s)) is not None and len(t)}
    if not tables:
        raise DataError(f"{source}: the source holds no images")
    return src, tables, [str(w.message) for w in caught]


def _scanned(tables: dict[str, ImageTable], rows: dict, results: dict) -> Scanned:
    good = [(s, int(r), res) for s in tables for r, res in zip(rows[s], results[s], strict=True) if res[0] == "ok"]
    thumbs = np.stack([g[2][5] for g in good]) if good else np.zeros((0, THUMB * THUMB), np.uint8)
    return Scanned(split=np.array([g[0] for g in good], dtype=object), index=np.array([g[1] for g in good], np.int64),
                   ids=[tables[s].ids[r] for s, r, _ in good], digest=[g[2][4] for g in good],
                   phash=phash64(thumbs), thumbs=thumbs)


def _near_duplicates(sc: Scanned, max_distance: int, min_correlation: float):
    """Pairs within ``max_distance`` phash bits whose thumbnails correlate, pixels not identical; and the
    number of phash candidates."""
    i, j, d = near_pairs(sc.phash, max_distance)
    diff = np.array([sc.digest[a] != sc.digest[b] for a, b in zip(i, j, strict=True)], dtype=bool)
    i, j, d = i[diff], j[diff], d[diff]
    corr = thumb_correlation(sc.thumbs, i, j)
    keep = np.flatnonzero(corr >= min_correlation)
    keep = keep[np.lexsort((d[keep], -corr[keep]))]
    return (i[keep], j[keep], d[keep], corr[keep]), len(i)


def _settings(max_distance: int, min_correlation: float, max_images, sampled: bool, candidates: int,
              seconds: float) -> dict[str, Any]:
    chunks, radius = _chunking(max_distance)
    return {
        "near_duplicate_rule": f"phash Hamming distance <= {max_distance} of 64 bits and Pearson correlation of "
                               f"the {THUMB}x{THUMB} gray thumbnails >= {min_correlation}, pixels not identical",
        "exact_duplicate_rule": "identical decoded pixels (dtype, shape and values)",
        "max_distance": max_distance, "min_correlation": min_correlation, "thumbnail": THUMB,
        "hash": "imagehash.phash, 64 bits, of the canonical gray 8-bit image",
        "search": f"multi-index hashing: {chunks} chunks, radius {radius}", "max_images": max_images,
        "sampled": sampled, "phash_candidates": candidates, "seconds": round(seconds, 2),
    }


def check_data(source: str, *, options: dict[str, Any] | None = None, data_dir: str | Path | None = None,
               max_images: int | None = None, max_distance: int = MAX_DISTANCE,
               min_correlation: float = MIN_CORRELATION, samples_per_class: int = 4,
               workers: int | None = None) -> DataReport:
    """Check ``source`` (``kind:argument`` as in configs) on its own splits; see the module docstring.

    ``options`` are the source's keyword options (``data.options``); ``max_images`` caps the images
    decoded (sampled evenly within each split); ``workers`` threads decode files (default: up to 4).
    """
    _check_settings(max_images, max_distance, min_correlation)
    opts = dict(options or {})
    src, tables, source_warnings = _load_source(source, opts, data_dir)
    return check_tables(src.spec, tables, source=source, options=opts, source_warnings=source_warnings,
                        max_images=max_images, max_distance=max_distance, min_correlation=min_correlation,
                        samples_per_class=samples_per_class, workers=workers)


def check_tables(spec, tables: dict[str, ImageTable], *, source: str, options: dict[str, Any] | None = None,
                 source_warnings: list[str] | None = None, max_images: int | None = None,
                 max_distance: int = MAX_DISTANCE, min_correlation: float = MIN_CORRELATION,
                 samples_per_class: int = 4, workers: int | None = None) -> DataReport:
    """:func:`check_data` on given split tables (a run's own train/val/test, say); ``spec`` is their
    :class:`~medcls.data.spec.DatasetSpec`."""
    _check_settings(max_images, max_distance, min_correlation)
    tables = {s: t for s, t in tables.items() if t is not None and len(t)}
    holder = SimpleNamespace(spec=spec)
    total = sum(len(t) for t in tables.values())
    rows = {s: _sample(len(t), total, max_images) for s, t in tables.items()}
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    t0 = time.perf_counter()
    results = {s: _scan(t, rows[s], workers, s) for s, t in tables.items()}
    unreadable = [{"split": s, "id": tables[s].ids[int(r)], "error": res[1]}
                  for s in tables for r, res in zip(rows[s], results[s], strict=True) if res[0] == "error"]
    sc = _scanned(tables, rows, results)
    t1 = time.perf_counter()
    near, candidates = _near_duplicates(sc, max_distance, min_correlation)
    log.info("decoded %d images in %.1fs; %d phash pairs within %d bits, %d near duplicates (%.1fs)",
             len(sc.ids), t1 - t0, candidates, max_distance, len(near[0]), time.perf_counter() - t1)
    sampled = any(len(rows[s]) < len(t) for s, t in tables.items())
    settings = _settings(max_distance, min_correlation, max_images, sampled, candidates, time.perf_counter() - t0)
    readable = {s: np.array([x for x, res in zip(rows[s], results[s], strict=True) if res[0] == "ok"], np.int64)
                for s in tables}
    fields = summarise(holder, tables, sc, near, [r for res in results.values() for r in res],
                       unreadable=unreadable, source_warnings=list(source_warnings or []), sampled=sampled)
    return DataReport(source=source, options=dict(options or {}), dataset=spec.name, task=spec.task,
                      classes=list(spec.class_names), settings=settings,
                      checked={s: len(rows[s]) for s in tables}, **fields,
                      samples=_samples(tables, readable, spec.class_names, samples_per_class), tables=tables)
