"""Random augmentation applied to whole batches of tensors (train only).

Working on batches keeps two CPU cores busy with the model instead of with
per-image Python: one ``affine_grid``/``grid_sample`` call warps the whole batch.
All randomness comes from an explicit ``torch.Generator`` so a run is
reproducible and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    rotate_deg: float = 0.0
    scale: float = 0.0  # +- fraction
    translate: float = 0.0  # +- fraction of size
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    brightness: float = 0.0  # +- additive
    contrast: float = 0.0  # +- multiplicative
    saturation: float = 0.0  # +- (RGB only)
    channel_gain: float = 0.0  # +- per-channel multiplicative (stain/colour variation)


PRESETS: dict[str, AugmentParams] = {
    # Chest/bone radiographs: small rotations and shifts, intensity changes, never vertical flips.
    "xray": AugmentParams(rotate_deg=15, scale=0.1, translate=0.1, brightness=0.1, contrast=0.1),
    # Histology patches have no orientation: full dihedral group plus colour jitter.
    "histology": AugmentParams(hflip=True, vflip=True, rot90=True, brightness=0.1, contrast=0.1,
                               saturation=0.1, channel_gain=0.05),
    "generic": AugmentParams(rotate_deg=10, scale=0.1, translate=0.05, hflip=True, brightness=0.1, contrast=0.1),
}


def _u(n: int, mag: float, g: torch.Generator) -> torch.Tensor:
    """n uniform samples in [-mag, mag]."""
    return (torch.rand(n, generator=g) * 2 - 1) * mag


class BatchAugment:
    """Apply the preset's random transforms to a (B, C, H, W) float batch in [0, 1]."""

    def __init__(self, params: AugmentParams) -> None:
        self.p = params

    @property
    def enabled(self) -> bool:
        return self.p != AugmentParams()

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        p, b = self.p, x.shape[0]
        if not self.enabled:
            return x
        dev = x.device
        if p.rot90:
            k = torch.randint(0, 4, (b,), generator=g)
            x = torch.stack([torch.rot90(x[i], int(k[i]), dims=(1, 2)) for i in range(b)]) if x.shape[2] == x.shape[3] else x
        if p.hflip:
            m = (torch.rand(b, generator=g) < 0.5).to(dev)
            x = torch.where(m[:, None, None, None], x.flip(3), x)
        if p.vflip:
            m = (torch.rand(b, generator=g) < 0.5).to(dev)
            x = torch.where(m[:, None, None, None], x.flip(2), x)
        if p.rotate_deg or p.scale or p.translate:
            ang = _u(b, math.radians(p.rotate_deg), g)
            s = 1 + _u(b, p.scale, g)
            tx, ty = _u(b, 2 * p.translate, g), _u(b, 2 * p.translate, g)  # grid units span 2
            cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(dev, x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if p.contrast or p.brightness:
            c = (1 + _u(b, p.contrast, g)).to(dev, x.dtype)[:, None, None, None]
            br = _u(b, p.brightness, g).to(dev, x.dtype)[:, None, None, None]
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * c + mean + br
        if x.shape[1] == 3 and p.saturation:
            sat = (1 + _u(b, p.saturation, g)).to(dev, x.dtype)[:, None, None, None]
            gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=x.dtype)[None, :, None, None]).sum(1, keepdim=True)
            x = (x - gray) * sat + gray
        if x.shape[1] == 3 and p.channel_gain:
            gain = (1 + _u(b * 3, p.channel_gain, g)).view(b, 3, 1, 1).to(dev, x.dtype)
            x = x * gain
        return x.clamp(0, 1)


def build_augment(preset: str, strength: float = 1.0, hflip: bool | None = None) -> BatchAugment:
    """The preset's augmentation with every magnitude scaled by ``strength`` (0 = off)."""
    p = PRESETS[preset]
    if hflip is not None:
        p = replace(p, hflip=hflip)
    if strength == 0:
        return BatchAugment(AugmentParams())
    scaled = replace(p, rotate_deg=p.rotate_deg * strength, scale=p.scale * strength,
                     translate=p.translate * strength, brightness=p.brightness * strength,
                     contrast=p.contrast * strength, saturation=p.saturation * strength,
                     channel_gain=p.channel_gain * strength)
    return BatchAugment(scaled)
