"""Deterministic preprocessing: array -> float32 tensor (C, S, S) in [0, 1]."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything needed to turn a decoded image into the model's input tensor.

    Stored in every run (and bundle) so that all consumers agree.
    """

    size: int
    in_chans: int
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    intensity: str = "dtype"  # uint8 -> /255; uint16 -> per-image min-max
    stain: str = "none"  # H&E stain normalisation of RGB uint8 images: none | macenko | reinhard
    stain_params: dict[str, Any] | None = None  # the fitted reference (plain JSON lists; see transforms.stain)
    # Since format 2 of this config (artefacts written before it load with both off, so they stay exact):
    quantize: bool = True  # the model-size image is kept in the source's dtype (uint8/uint16): 4-12x smaller caches
    jpeg_draft: bool = True  # JPEGs >= 2x the size are decoded at a reduced DCT scale (see data.images.decode_image)

    def __post_init__(self) -> None:
        if self.stain != "none" or self.stain_params is not None:
            from .stain import check_stain_params

            check_stain_params(self.stain, self.stain_params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        d = dict(d)
        d.setdefault("quantize", False)  # written before stored images were quantised: keep its exact tensors
        d.setdefault("jpeg_draft", False)
        return cls(**d)


def _clahe(img: np.ndarray, clip: float, grid: int) -> np.ndarray:
    import cv2

    op = cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid))
    if img.ndim == 2:
        return op.apply(img)
    if img.dtype != np.uint8:  # CLAHE on the luminance of a 16-bit RGB image: use gray
        raise DataError("CLAHE on 16-bit colour images is not supported; convert to gray (model.in_chans=1)")
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[..., 0] = op.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _to_unit(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        lo, hi = float(img.min()), float(img.max())
        return (img.astype(np.float32) - lo) / max(hi - lo, 1.0)
    if img.dtype == bool:
        return img.astype(np.float32)
    raise DataError(f"expected a uint8 or uint16 image, got {img.dtype}")


def _levels(dtype: np.dtype) -> int:
    return 65535 if dtype == np.uint16 else 255


class Preprocess:
    """Callable: (H, W) / (H, W, C) uint8|uint16 array -> (in_chans, size, size) float32 tensor in [0, 1].

    Two stages, so caches hold the small form and the cheap rest runs per batch on the device:

    - :meth:`stored`: RGBA -> RGB, optional stain normalisation (8-bit RGB, at native size), colour -> gray
      when the model is gray, optional CLAHE, scale to [0, 1], antialiased bilinear resize to ``size`` x
      ``size``, then (``cfg.quantize``) back to the source's dtype: a (1 or 3, size, size) uint8/uint16 tensor,
      a gray image stored once whatever the model's channel count.
    - :meth:`finish`: a batch of stored images -> float32 in [0, 1] with the model's channel count.

    ``preprocess(img)`` is ``finish(stored(img))``: every path (cache, workers, serving) gives the same tensor.
    """

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.stain = None
        if cfg.stain != "none":
            from .stain import StainNormalizer

            self.stain = StainNormalizer(cfg.stain, cfg.stain_params)

    @property
    def draft(self) -> int | None:
        """The ``draft`` size for :func:`medcls.data.images.decode_image` (None: decode at full size)."""
        return self.cfg.size if self.cfg.jpeg_draft else None

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        return self.finish(self.stored(img).unsqueeze(0))[0]

    def stored_shape(self, channels: int) -> tuple[int, int, int]:
        """The shape :meth:`stored` gives for a dataset of ``channels``-channel images."""
        c = 1 if self.cfg.in_chans == 1 or channels == 1 else 3
        return (c, self.cfg.size, self.cfg.size)

    def stored(self, img: np.ndarray) -> torch.Tensor:
        """The model-size image: (c, size, size) uint8/uint16 (float32 in [0, 1] when ``cfg.quantize`` is off)."""
        cfg = self.cfg
        img = _check_shape(np.asarray(img))
        if self.stain is not None:
            img = self.stain(img)
        if img.ndim == 3 and cfg.in_chans == 1:
            gray = img.astype(np.float32) @ _LUMA
            img = np.clip(np.rint(gray), 0, np.iinfo(img.dtype).max).astype(img.dtype)
        if cfg.clahe:
            img = _clahe(np.ascontiguousarray(img), cfg.clahe_clip, cfg.clahe_grid)
        x = torch.from_numpy(np.ascontiguousarray(_to_unit(img)))
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if cfg.in_chans not in (1, 3) or (x.shape[0] == 3 and cfg.in_chans != 3):
            raise DataError(f"cannot feed a 3-channel image to a {cfg.in_chans}-channel model")
        if x.shape[1:] != (cfg.size, cfg.size):
            x = F.interpolate(x.unsqueeze(0), size=(cfg.size, cfg.size), mode="bilinear",
                              antialias=True, align_corners=False)[0].clamp_(0, 1)
        if not cfg.quantize:
            return x.contiguous()
        levels = _levels(img.dtype)
        out = torch.round(x * levels)
        return out.to(torch.uint8 if levels == 255 else torch.uint16).contiguous()

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Stored images (B, c, size, size), on any device -> float32 (B, in_chans, size, size) in [0, 1]."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.dtype == torch.uint16:
            x = x.float().div_(65535.0)
        else:
            x = x.float()
        if x.shape[1] == 1 and self.cfg.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous()


def _check_shape(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise DataError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {img.shape}")
    if min(img.shape[:2]) < 2:
        raise DataError(f"image too small: {img.shape[:2]}")
    return img
