"""Mixup / CutMix: soft targets, convex images, seeded, and the trainer uses them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from medcls.engine.mixing import mix_batch


def _batch(b: int = 8):
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, 6, 6).clone()
    y = torch.arange(b) % 2
    return x, y


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_off_returns_the_batch_unchanged_and_draws_nothing():
    x, y = _batch()
    g = _gen()
    state = g.get_state()
    m = mix_batch(x, y, g)
    assert m.x is x and m.lam == 1.0 and torch.equal(m.y_a, y)
    assert torch.equal(g.get_state(), state)  # resumed runs without mixing stay bit-identical


def test_mixup_makes_convex_images_and_soft_targets():
    x, y = _batch()
    m = mix_batch(x, y, _gen(), mixup=0.4)
    assert 0 < m.lam < 1
    perm_vals = (m.x[:, 0, 0, 0] - m.lam * x[:, 0, 0, 0]) / (1 - m.lam)
    assert torch.allclose(perm_vals.sort().values, x[:, 0, 0, 0].sort().values, atol=1e-4)  # partner is a permutation
    soft = m.soft_targets(2)
    assert torch.allclose(soft.sum(1), torch.ones(len(x)))
    assert ((soft > 0) & (soft < 1)).any()  # not one-hot any more
    assert torch.allclose(soft[torch.arange(len(x)), m.y_a], torch.where(m.y_a == m.y_b, 1.0, m.lam))


def test_cutmix_pastes_a_box_and_lambda_is_the_kept_area():
    x, y = _batch()
    m = mix_batch(x, y, _gen(3), cutmix=1.0)
    changed = (m.x != x)[:, 0]
    moved = changed.any(0).float().mean().item()  # pixel positions taken from the partner
    assert m.lam == pytest.approx(1 - moved) or torch.equal(m.y_a, m.y_b)
    assert set(np.unique(m.x.numpy())) <= set(np.unique(x.numpy()))  # pasted, not blended


def test_mixed_loss_equals_cross_entropy_on_soft_targets():
    x, y = _batch()
    m = mix_batch(x, y, _gen(1), mixup=1.0)
    logits = torch.randn(len(x), 2)
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    assert m.loss(ce, logits).item() == pytest.approx(ce(logits, m.soft_targets(2)).item(), rel=1e-5)


def test_same_generator_seed_same_mix():
    x, y = _batch()
    a, b = mix_batch(x, y, _gen(7), mixup=0.4, cutmix=1.0), mix_batch(x, y, _gen(7), mixup=0.4, cutmix=1.0)
    assert a.lam == b.lam and torch.equal(a.x, b.x)


def test_trainer_with_mixup_trains_and_changes_the_weights(tiny_cfg):
    from medcls import train

    base = train(tiny_cfg)
    mixed = train({**tiny_cfg, "name": "mix", "train": {**tiny_cfg["train"], "mixup": 0.4, "cutmix": 1.0}})
    h, h0 = (list(csv.DictReader((r.path / "history.csv").open())) for r in (mixed, base))
    assert len(h) == 2 and all(np.isfinite(float(r["train_loss"])) for r in h)
    assert float(h[0]["train_loss"]) != float(h0[0]["train_loss"])
