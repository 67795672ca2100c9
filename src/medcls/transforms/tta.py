"""Test-time augmentation: deterministic views of a batch per modality preset."""

from __future__ import annotations

from collections.abc import Callable

import torch

View = Callable[[torch.Tensor], torch.Tensor]


def _rot(k: int) -> View:
    return lambda x: torch.rot90(x, k, dims=(2, 3))


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def tta_views(preset: str) -> list[View]:
    """xray/generic: identity + horizontal flip; histology: the 8 dihedral views (rot90 x flip)."""
    if preset == "histology":
        return [_rot(k) for k in range(4)] + [(lambda x, k=k: _rot(k)(_hflip(x))) for k in range(4)]
    return [_identity, _hflip]
