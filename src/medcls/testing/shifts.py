"""Acquisition shifts of 8-bit gray images: what another scanner, protocol or site does to the same anatomy.

For drift and external-validation tests and benchmarks: ``shift(images, kind, severity)`` with ``severity`` 1
a plausible change (a different detector's gamma or contrast curve, a noisier low-dose protocol, a softer
reconstruction), 0 none.
"""

from __future__ import annotations

import numpy as np

KINDS = ("gamma", "contrast", "noise", "blur")


def shift(images: np.ndarray, kind: str, severity: float = 1.0, seed: int = 0) -> np.ndarray:
    """``images`` (N, H, W) uint8 under the acquisition shift ``kind`` (see :data:`KINDS`), as uint8."""
    x = np.asarray(images, np.float64)
    if kind == "gamma":  # a detector's response curve: mid-tones darker
        out = 255 * (x / 255) ** (1 + 0.6 * severity)
    elif kind == "contrast":  # a flatter window: intensities pulled towards each image's mean
        mean = x.mean(axis=(1, 2), keepdims=True)
        out = mean + (x - mean) * (1 - 0.4 * severity)
    elif kind == "noise":  # a lower dose: Gaussian noise
        out = x + np.random.default_rng(seed).normal(0, 12 * severity, x.shape)
    elif kind == "blur":  # a softer reconstruction kernel
        from scipy.ndimage import gaussian_filter

        out = gaussian_filter(x, sigma=(0, 0.9 * severity, 0.9 * severity))
    else:
        raise ValueError(f"shift kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
