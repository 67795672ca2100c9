"""Images of other kinds than a model was trained on, rendered here, to check an out-of-distribution gate.

Each renderer draws one ``size`` x ``size`` uint8 image from a seeded generator: text pages (a scanned
document), colour photos (shapes on smooth colour fields), natural textures (1/f noise, as in photos of
surfaces), histology-like patches (purple nuclei on pink stroma), ultrasound-like sectors (speckle in a
fan on black) and fundus-like discs (an orange retina with vessels). None is a real scan: they stand in for
the inputs a deployed model meets by mistake, and any real set can be scored the same way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WORDS = ("patient", "report", "findings", "impression", "left", "right", "lung", "clear", "no", "acute",
         "history", "chest", "view", "signed", "date", "normal", "heart", "size", "within", "limits")


def text_page(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("L", (size, size), int(rng.integers(225, 256)))
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(4, 12))
    while y < size - 10:
        line = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
        draw.text((int(rng.integers(4, 14)), y), line, fill=int(rng.integers(0, 60)))
        y += int(rng.integers(11, 16))
    return np.asarray(img)


def colour_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([c0 + (c1 - c0) * (yy if k % 2 else xx) for k, (c0, c1) in
                     enumerate(rng.integers(0, 256, (3, 2)))], axis=-1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = rng.integers(0, size, 2)
        x1, y1 = np.array([x0, y0]) + rng.integers(size // 8, size // 2, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x1), int(y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(1)))


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / np.maximum(radius, 1 / size)
    field = np.real(np.fft.ifft2(spectrum))
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    return (255 * field).astype(np.uint8)


def histology(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("RGB", (size, size), (int(rng.integers(220, 245)), int(rng.integers(160, 200)),
                                          int(rng.integers(200, 230))))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(30, 80))):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(3, max(4, size // 20)))
        purple = (int(rng.integers(70, 130)), int(rng.integers(30, 80)), int(rng.integers(120, 180)))
        draw.ellipse([int(x) - r, int(y) - r, int(x) + r, int(y) + r], fill=purple)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(0.8)))


def ultrasound(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, r = size / 2, np.hypot(xx - size / 2, yy)
    angle = np.degrees(np.arctan2(xx - cx, yy + 1e-9))
    fan = (np.abs(angle) < rng.uniform(30, 45)) & (r < size * rng.uniform(0.85, 1.0)) & (r > size * 0.08)
    speckle = rng.rayleigh(0.35, (size, size)) * np.exp(-r / (size * rng.uniform(0.8, 1.5)))
    return (255 * np.clip(speckle, 0, 1) * fan).astype(np.uint8)


def fundus(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    m = size // 16
    draw.ellipse([m, m, size - m, size - m], fill=(int(rng.integers(180, 230)), int(rng.integers(70, 110)), 30))
    c = np.array([size * rng.uniform(0.35, 0.65), size / 2])
    draw.ellipse([*(c - size / 14), *(c + size / 14)], fill=(250, 220, 150))
    for _ in range(8):
        pts = [tuple(c)]
        for _ in range(5):
            pts.append(tuple(np.asarray(pts[-1]) + rng.normal(0, size / 10, 2)))
        draw.line(pts, fill=(120, 20, 10), width=max(1, size // 80))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(1)))


KINDS = {"text page": text_page, "colour photo": colour_photo, "natural texture": texture,
         "histology-like": histology, "ultrasound-like": ultrasound, "fundus-like": fundus}


def render(kind: str, n: int, *, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """``n`` images of ``kind`` (a key of :data:`KINDS`)."""
    rng = np.random.default_rng(seed)
    return [KINDS[kind](rng, size) for _ in range(n)]
