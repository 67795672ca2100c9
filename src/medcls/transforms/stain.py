"""H&E stain normalisation: Macenko (ISBI 2009) and Reinhard (2001), fitted once on a reference patch.

The reference's stain vectors (Macenko) or LAB statistics (Reinhard) are kept
as plain JSON lists in the run's :class:`~medcls.transforms.PreprocessConfig`,
so a bundle rebuilds the same normaliser without the reference image. Applying
Macenko re-estimates the stains of each image and re-mixes its concentrations
with the reference stains; Reinhard matches LAB means and standard deviations.

Reinhard uses torchstain (numpy backend: its fit and LAB conversions). Macenko
uses torchstain's math, ported here with a fast concentration solve (checked
against torchstain in the tests). torchstain crashes on a near-white patch
(``LinAlgError``) and turns a flat patch black (division by a zero standard
deviation), so every image is checked first: an image with too little tissue,
or whose estimate is degenerate, is returned unchanged; each reason is logged
once and counted in :attr:`StainNormalizer.skipped`.

Parameters (``PreprocessConfig.stain_params``)::

    macenko:  stain_matrix (3 x 2: rows R, G, B; columns haematoxylin, eosin; torchstain's HERef),
              max_concentration (2: 99th percentiles of H and E; torchstain's maxCRef), io, alpha, beta
    reinhard: lab_mean, lab_std (3 each: L in 0..100, a, b; torchstain's target_means / target_stds)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, get_args

import numpy as np

from ..choices import StainMethod
from ..errors import ConfigError, DataError

log = logging.getLogger("medcls")

METHODS = get_args(StainMethod)
FITTED = tuple(m for m in METHODS if m != "none")  # the methods fitted on a reference patch
FORMAT = "medcls-stain-reference"
IO, ALPHA, BETA = 240.0, 1.0, 0.15  # transmitted light, angle percentile, OD threshold of tissue (Macenko)
MIN_TISSUE_FRACTION = 0.01  # images with fewer tissue pixels are left unnormalised
MIN_TISSUE_PIXELS = 64
MIN_REFERENCE_TISSUE = 0.05  # a reference must be at least this much tissue
MIN_STAIN_ANGLE_COS = 0.999  # H and E estimates closer than ~2.6 degrees: degenerate
MIN_CONCENTRATION = 1e-3
MIN_LAB_STD = 0.5  # a flat image (LAB std below this) is not rescaled


# ----------------------------------------------------------------------------- helpers
def _optical_density(rgb: np.ndarray, io_: float = IO) -> np.ndarray:
    """(..., 3) uint8 -> optical density, as torchstain computes it."""
    return -np.log((rgb.astype(np.float64) + 1.0) / io_)


def tissue_mask(rgb: np.ndarray, *, io_: float = IO, beta: float = BETA) -> np.ndarray:
    """Pixels whose optical density is at least ``beta`` in every channel (Macenko's tissue pixels)."""
    return (_optical_density(rgb, io_) >= beta).all(axis=-1)


def tissue_fraction(rgb: np.ndarray) -> float:
    return float(tissue_mask(rgb).mean())


def _as_rgb(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[-1] != 3:
        raise DataError(f"{name}: stain normalisation needs an RGB image (H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        raise DataError(f"{name}: stain normalisation needs 8-bit RGB, got {img.dtype}")
    return np.ascontiguousarray(img)


def _enough_tissue(rgb: np.ndarray, fraction: float) -> bool:
    n = int(tissue_mask(rgb).sum())
    return n >= max(MIN_TISSUE_PIXELS, fraction * rgb.shape[0] * rgb.shape[1])


def _matrix(params: dict[str, Any], key: str, shape: tuple[int, ...], method: str) -> np.ndarray:
    try:
        a = np.asarray(params[key], dtype=np.float64)
    except KeyError:
        raise ConfigError(f"stain_params for {method} must hold {key!r} (got keys {sorted(params)})") from None
    except (TypeError, ValueError):
        raise ConfigError(f"stain_params[{key!r}] must be numbers, got {params[key]!r}") from None
    if a.shape != shape or not np.all(np.isfinite(a)):
        raise ConfigError(f"stain_params[{key!r}] for {method} must be finite numbers of shape {shape}, "
                          f"got {params[key]!r}")
    return a


def check_stain_params(method: str, params: dict[str, Any] | None) -> None:
    """Raise ConfigError unless ``params`` are a valid fitted reference for ``method``."""
    if method not in METHODS:
        from ..errors import did_you_mean

        raise ConfigError(f"stain must be one of {', '.join(METHODS)}, got {method!r}.{did_you_mean(method, METHODS)}")
    if method == "none":
        if params is not None:
            raise ConfigError("stain_params are given but stain is 'none'")
        return
    if not isinstance(params, dict):
        raise ConfigError(f"stain={method} needs stain_params (a fitted reference), got {params!r}")
    if method == "macenko":
        _matrix(params, "stain_matrix", (3, 2), method)
        if np.any(_matrix(params, "max_concentration", (2,), method) <= 0):
            raise ConfigError(f"stain_params['max_concentration'] must be positive, got {params['max_concentration']}")
        for key in ("io", "alpha", "beta"):
            if key in params and (not isinstance(params[key], int | float) or not 0 <= params[key] <= 255):
                raise ConfigError(f"stain_params[{key!r}] must be a number in [0, 255], got {params[key]!r}")
    else:
        _matrix(params, "lab_mean", (3,), method)
        if np.any(_matrix(params, "lab_std", (3,), method) <= 0):
            raise ConfigError(f"stain_params['lab_std'] must be positive, got {params['lab_std']}")


# ----------------------------------------------------------------------------- estimation
def _macenko_estimate(rgb: np.ndarray, io_: float, alpha: float,
                      beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Stain matrix (3, 2), 99th-percentile concentrations (2,) and concentrations (2, H*W) of ``rgb``.

    The math of torchstain's ``MacenkoNormalizer.fit`` (numpy backend; the tests check
    the two agree), with the concentrations solved by a pseudo-inverse: torchstain's
    ``lstsq`` on a strided array costs ~20 ms per 96 px patch, i.e. hours per PCam epoch.
    None when the estimate is degenerate (too few tissue pixels, one stain only, flat patch).
    """
    od = _optical_density(rgb.reshape(-1, 3), io_)
    tissue = od[(od >= beta).all(axis=1)]
    if len(tissue) < MIN_TISSUE_PIXELS:
        return None
    with np.errstate(all="ignore"):
        try:
            _, vecs = np.linalg.eigh(np.cov(tissue.T))
        except np.linalg.LinAlgError:
            return None
        plane = vecs[:, 1:3]  # the two largest eigenvectors
        proj = tissue @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [alpha, 100 - alpha])
        v_min = plane @ np.array([np.cos(lo), np.sin(lo)])
        v_max = plane @ np.array([np.cos(hi), np.sin(hi)])
        he = np.stack([v_min, v_max], 1) if v_min[0] > v_max[0] else np.stack([v_max, v_min], 1)  # haematoxylin first
        conc = np.linalg.pinv(he) @ od.T
        max_c = np.percentile(conc, 99, axis=1)
    if not (np.all(np.isfinite(he)) and np.all(np.isfinite(max_c))) or np.any(max_c < MIN_CONCENTRATION):
        return None
    cos = abs(float(he[:, 0] @ he[:, 1])) / max(float(np.linalg.norm(he[:, 0]) * np.linalg.norm(he[:, 1])), 1e-12)
    return (he, max_c, conc) if cos < MIN_STAIN_ANGLE_COS else None


def _lab_channels(rgb: np.ndarray) -> list[np.ndarray]:
    from torchstain.numpy.utils import lab_split, rgb2lab

    return list(lab_split(rgb2lab(rgb.astype(np.float32) / 255.0)))


def fit_stain(img: np.ndarray, method: str, *, name: str = "stain reference") -> dict[str, Any]:
    """Fit ``method`` on a reference patch; returns JSON-serialisable ``stain_params``.

    Raises DataError when the patch is not 8-bit RGB or holds too little tissue.
    """
    if method not in FITTED:
        raise ConfigError(f"stain method must be {' or '.join(FITTED)}, got {method!r}")
    rgb = _as_rgb(img, name)
    frac = tissue_fraction(rgb)
    if not _enough_tissue(rgb, MIN_REFERENCE_TISSUE):
        raise DataError(f"{name}: only {frac:.1%} of the pixels are tissue (optical density >= {BETA} in every "
                        f"channel); a stain reference needs at least {MIN_REFERENCE_TISSUE:.0%}: choose a patch "
                        f"well covered by stained tissue")
    if method == "macenko":
        est = _macenko_estimate(rgb, IO, ALPHA, BETA)
        if est is None:
            raise DataError(f"{name}: the Macenko stain estimate is degenerate (one stain only, or a flat patch); "
                            f"choose a patch showing both haematoxylin and eosin")
        he, max_c, _ = est
        return {"stain_matrix": np.round(he, 6).tolist(), "max_concentration": np.round(max_c, 6).tolist(),
                "io": IO, "alpha": ALPHA, "beta": BETA}
    from torchstain.numpy.normalizers import NumpyReinhardNormalizer

    est = NumpyReinhardNormalizer()
    est.fit(rgb)
    mean, std = np.asarray(est.target_means, np.float64), np.asarray(est.target_stds, np.float64)
    if np.any(std < MIN_LAB_STD):
        raise DataError(f"{name}: the patch is nearly flat in colour (LAB std {np.round(std, 3).tolist()}); "
                        f"choose a patch with stained tissue")
    return {"lab_mean": np.round(mean, 6).tolist(), "lab_std": np.round(std, 6).tolist()}


# ----------------------------------------------------------------------------- application
class StainNormalizer:
    """Callable: RGB uint8 (H, W, 3) -> stain-normalised RGB uint8 of the same shape.

    Grayscale images, images with too little tissue and degenerate estimates are
    returned unchanged; ``skipped`` counts them by reason (each reason is logged once).
    """

    def __init__(self, method: str, params: dict[str, Any]) -> None:
        check_stain_params(method, params)
        if method == "none":
            raise ConfigError("StainNormalizer needs method macenko or reinhard, got 'none'")
        self.method = method
        self.skipped: Counter[str] = Counter()
        if method == "macenko":
            self.stain_matrix = np.asarray(params["stain_matrix"], np.float64)
            self.max_concentration = np.asarray(params["max_concentration"], np.float64)
            self.io, self.alpha, self.beta = (float(params.get(k, d)) for k, d in
                                              (("io", IO), ("alpha", ALPHA), ("beta", BETA)))
        else:
            self.lab_mean = np.asarray(params["lab_mean"], np.float64)
            self.lab_std = np.asarray(params["lab_std"], np.float64)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        if self.skipped[reason] == 1:
            log.warning("stain normalisation (%s) skipped: %s; such images are used unnormalised "
                        "(counted, logged once)", self.method, reason)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = np.asarray(img)
        if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 1):
            self._skip("grayscale image")
            return img
        rgb = _as_rgb(img, "image")
        if not _enough_tissue(rgb, MIN_TISSUE_FRACTION):
            self._skip(f"less than {MIN_TISSUE_FRACTION:.0%} tissue")
            return rgb
        out = self._macenko(rgb) if self.method == "macenko" else self._reinhard(rgb)
        if out is None:
            self._skip("degenerate stain estimate")
            return rgb
        return out

    def _macenko(self, rgb: np.ndarray) -> np.ndarray | None:
        est = _macenko_estimate(rgb, self.io, self.alpha, self.beta)
        if est is None:
            return None
        _, max_c, conc = est
        # non-negative concentrations (as StainTools' constrained solve): background maps to neutral white, not a tint
        conc = np.maximum(conc, 0) * (self.max_concentration / max_c)[:, None]  # each stain scaled to the reference
        out = self.io * np.exp(-(self.stain_matrix @ conc))
        return np.clip(np.rint(out.T), 0, 255).astype(np.uint8).reshape(rgb.shape)

    def _reinhard(self, rgb: np.ndarray) -> np.ndarray | None:
        from torchstain.numpy.utils import lab2rgb, lab_merge

        chans = _lab_channels(rgb)
        mean = np.array([c.mean() for c in chans], np.float64)
        std = np.array([c.std() for c in chans], np.float64)
        if np.any(std < MIN_LAB_STD):
            return None
        out = [(c - m) / s * st + mt for c, m, s, mt, st in zip(chans, mean, std, self.lab_mean, self.lab_std,
                                                                   strict=True)]
        rgb01 = lab2rgb(lab_merge(*out))
        return np.clip(np.rint(rgb01 * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- reference files
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reference_document(img: np.ndarray, method: str, *, name: str, data: bytes | None = None) -> dict[str, Any]:
    """The JSON written by ``medcls data stain-reference``: method, params and where they came from."""
    params = fit_stain(img, method, name=name)
    rgb = _as_rgb(img, name)
    return {"format": FORMAT, "version": 1, "method": method, "params": params,
            "reference": {"file": name, "sha256": _sha256(data) if data is not None else None,
                          "shape": list(rgb.shape), "tissue_fraction": round(tissue_fraction(rgb), 4)}}


def load_stain_reference(path: str | Path, method: str, *, key: str = "transforms.stain_reference") -> dict[str, Any]:
    """``stain_params`` for ``method`` from a reference image (fitted now) or a stain-reference JSON."""
    from ..data.images import read_image

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{key}: file not found: {p} (expected a reference patch image or a JSON written by "
                          f"`medcls data stain-reference`)")
    if p.suffix.lower() != ".json":
        params = fit_stain(read_image(p), method, name=str(p))
        params["source"] = f"{p.name} sha256:{_sha256(p.read_bytes())[:16]}"
        return params
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{key}: {p} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("params"), dict):
        raise ConfigError(f"{key}: {p} is not a stain reference written by `medcls data stain-reference` "
                          f"(expected format {FORMAT!r} with 'method' and 'params')")
    if doc.get("method") != method:
        raise ConfigError(f"{key}: {p} holds {doc.get('method')!r} parameters but transforms.stain is {method!r}; "
                          f"refit with `medcls data stain-reference IMAGE --method {method}`")
    params = dict(doc["params"])
    check_stain_params(method, params)
    ref = doc.get("reference") or {}
    params["source"] = f"{ref.get('file', p.name)} sha256:{str(ref.get('sha256') or '?')[:16]}"
    return params


def resolve_stain(method: str, reference: str | None, *, channels: int, dataset: str) -> dict[str, Any] | None:
    """``stain_params`` for the training config ``transforms.stain`` / ``transforms.stain_reference``."""
    if method == "none":
        if reference:
            log.warning("transforms.stain_reference=%s is ignored because transforms.stain is none", reference)
        return None
    if channels != 3:
        raise ConfigError(f"transforms.stain={method} normalises H&E colour, but dataset {dataset!r} has {channels} "
                          f"channel(s); set transforms.stain=none")
    if not reference:
        raise ConfigError(f"transforms.stain={method} needs transforms.stain_reference: a reference patch image or a "
                          f"JSON written by `medcls data stain-reference IMAGE --method {method} -o stain.json`")
    return load_stain_reference(reference, method)


def preview_png(pairs: list[tuple[np.ndarray, np.ndarray]], tile: int = 128) -> bytes:
    """PNG bytes of a grid: one row per (before, after) pair."""
    from PIL import Image

    grid = Image.new("RGB", (2 * tile, tile * len(pairs)), "white")
    for r, (before, after) in enumerate(pairs):
        for c, im in enumerate((before, after)):
            im = np.asarray(im)
            pil = Image.fromarray(im if im.ndim == 3 else np.stack([im] * 3, -1))
            grid.paste(pil.resize((tile, tile), Image.Resampling.BILINEAR), (c * tile, r * tile))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()
