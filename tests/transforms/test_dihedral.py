"""The histology preset: dihedral (rot90 x flip) augmentation and 8-view test-time augmentation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from medcls.data.table import ArrayTable
from medcls.engine.loader import Batches
from medcls.engine.predict import predict_logits
from medcls.transforms import PRESETS, BatchAugment, Preprocess, PreprocessConfig
from medcls.transforms.tta import tta_views


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 elements of the dihedral group applied to (..., H, W): rot90^k and rot90^k after a flip."""
    return [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)] + \
        [torch.rot90(x.flip(-1), k, dims=(-2, -1)) for k in range(4)]


def orientation(y: torch.Tensor, x: torch.Tensor) -> int:
    matches = [i for i, v in enumerate(dihedral(x)) if torch.equal(v, y)]
    assert len(matches) == 1, "not a dihedral view of the input"
    return matches[0]


def asymmetric(c: int = 3, s: int = 12) -> torch.Tensor:
    return torch.arange(c * s * s, dtype=torch.float32).reshape(1, c, s, s) / (c * s * s)  # no symmetry at all


def test_histology_augmentation_produces_all_eight_orientations():
    p = PRESETS["histology"]
    # geometry keeps the centre at the centre (PCam labels come from the centre 32x32): no shifts, scales, rotations
    assert (p.rotate_deg, p.scale, p.translate) == (0, 0, 0) and p.hflip and p.vflip and p.rot90
    geometric = BatchAugment(replace(p, brightness=0, contrast=0, saturation=0, channel_gain=0))
    x = asymmetric()
    y = geometric(x.expand(64, -1, -1, -1).clone(), torch.Generator().manual_seed(0))
    seen = [orientation(y[i], x[0]) for i in range(64)]
    assert sorted(set(seen)) == list(range(8))
    assert max(np.bincount(seen)) < 20  # roughly uniform, not one dominant view


def test_histology_tta_uses_the_eight_dihedral_views():
    x = asymmetric().expand(2, -1, -1, -1).clone()
    views = tta_views("histology")
    assert len(views) == 8
    assert sorted(orientation(v(x)[0], x[0]) for v in views) == list(range(8))
    assert len(tta_views("xray")) == 2  # identity + horizontal flip only


def test_tta_logits_are_the_mean_over_the_eight_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)).eval()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    batches = Batches(ArrayTable(imgs, np.arange(5) % 2), Preprocess(PreprocessConfig(size=12, in_chans=3)),
                      batch_size=4, cache="off")
    views = tta_views("histology")
    got = predict_logits(model, batches, torch.device("cpu"), views=views)
    x = torch.stack([batches.preprocess(batches.table.load(i)) for i in range(5)])
    with torch.no_grad():
        per_view = torch.stack([model(v) for v in dihedral(x)])
    np.testing.assert_allclose(got, per_view.mean(0).numpy(), atol=1e-6)
    plain = predict_logits(model, batches, torch.device("cpu"))
    assert np.abs(plain - got).max() > 1e-4  # the model is not invariant, so TTA changes the logits
