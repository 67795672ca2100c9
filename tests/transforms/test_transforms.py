from __future__ import annotations

import numpy as np
import pytest
import torch

from medcls.errors import DataError
from medcls.transforms import PRESETS, Preprocess, PreprocessConfig, build_augment


def pre(size=28, in_chans=1, **kw):
    return Preprocess(PreprocessConfig(size=size, in_chans=in_chans, **kw))


def test_gray_uint8_identity_size():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = pre()(img)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.from_numpy(img.astype(np.float32) / 255))


def test_gray_to_three_channels_and_rgb_to_gray():
    img = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    x3 = pre(32, 3)(img)
    assert x3.shape == (3, 32, 32) and torch.equal(x3[0], x3[2])
    rgb = np.stack([img, img, img], -1)
    g = pre(32, 1)(rgb)
    assert g.shape == (1, 32, 32)
    assert torch.allclose(g, x3[:1], atol=1e-6)


def test_rgba_drops_alpha_and_16bit_is_scaled_per_image():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 7
    x = pre(10, 3)(rgba)
    assert float(x[0].mean()) == 1.0 and float(x[1:].max()) == 0.0
    img16 = np.linspace(1000, 4000, 100).reshape(10, 10).astype(np.uint16)
    y = pre(10, 1)(img16)
    assert float(y.min()) == 0.0 and float(y.max()) == pytest.approx(1.0)


def test_clahe_changes_low_contrast_image():
    img = (np.random.default_rng(0).integers(100, 120, (64, 64))).astype(np.uint8)
    plain, eq = pre(64)(img), pre(64, clahe=True)(img)
    assert float(eq.std()) > float(plain.std())


@pytest.mark.parametrize("shape", [(5, 5, 2), (4, 4, 4, 4), (1, 10)])
def test_bad_shapes(shape):
    with pytest.raises(DataError, match="expected an image|too small"):
        pre()(np.zeros(shape, np.uint8))


def test_float_image_rejected():
    with pytest.raises(DataError, match="uint8 or uint16"):
        pre()(np.zeros((8, 8), np.float32))


def test_augment_is_seeded_and_keeps_range():
    x = torch.rand(8, 1, 28, 28)
    aug = build_augment("xray")
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_xray_never_flips_vertically_and_histology_is_dihedral():
    assert not PRESETS["xray"].vflip and not PRESETS["xray"].rot90
    assert PRESETS["histology"].vflip and PRESETS["histology"].rot90
    # a pure dihedral augmentation preserves the multiset of pixel values exactly
    x = torch.rand(4, 3, 16, 16)
    aug = build_augment("histology", 1.0)
    aug.p = type(aug.p)(hflip=True, vflip=True, rot90=True)
    y = aug(x, torch.Generator().manual_seed(0))
    for i in range(4):
        assert torch.equal(x[i].flatten().sort().values, y[i].flatten().sort().values)


def test_strength_zero_disables():
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(build_augment("generic", 0.0)(x, torch.Generator()), x)
