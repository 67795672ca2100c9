"""Learning-rate schedules as functions of the step (warmup, cosine, onecycle, step decay) and the optimisers."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from medcls.engine.schedule import build_optimizer, lr_factor, set_lr


def _factors(kind: str, total: int, warmup: int, **kw) -> list[float]:
    return [lr_factor(kind, s, total, warmup, **kw) for s in range(total + 1)]


def test_none_is_constant():
    assert set(_factors("none", 10, 3)) == {1.0}


def test_cosine_warmup_ramps_linearly_then_decays_to_zero():
    f = _factors("cosine", 20, 4)
    assert f[:4] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5])  # step 0 already trains, at 1 / (warmup + 1)
    assert f[4] == 1.0  # the peak right after warmup
    assert f[12] == pytest.approx(0.5)  # half-way through the decay
    assert f[20] == pytest.approx(0.0, abs=1e-12)  # the end value
    assert lr_factor("cosine", 25, 20, 4) == pytest.approx(0.0, abs=1e-12)  # stays there past the end
    assert all(a > b for a, b in pairwise(f[4:]))  # strictly decreasing after the peak


def test_cosine_without_warmup_starts_at_the_peak_and_last_step_is_small():
    f = _factors("cosine", 10, 0)
    assert f[0] == 1.0
    assert f[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))  # the last step of a 10-step run


def test_warmup_longer_than_the_run_keeps_ramping_to_the_last_step():
    f = [lr_factor("cosine", s, 10, 20) for s in range(10)]
    assert all(0 < a < b < 1 for a, b in pairwise(f))
    assert f[-1] == pytest.approx(10 / 21)
    assert lr_factor("onecycle", 9, 10, 20) < 1


def test_step_decays_by_gamma_every_step_every_steps():
    f = _factors("step", 12, 0, step_every=4, gamma=0.5)
    assert f == pytest.approx([1] * 4 + [0.5] * 4 + [0.25] * 4 + [0.125])
    assert lr_factor("step", 3, 10, 0, step_every=0, gamma=0.1) == pytest.approx(1e-3)  # 0 counts as every step


def test_onecycle_rises_from_1_25th_to_the_peak_then_falls_to_1e4_below_the_start():
    f = _factors("onecycle", 20, 5)
    assert f[0] == pytest.approx(1 / 25)
    assert f[5] == 1.0
    assert all(a < b for a, b in pairwise(f[:6]))
    assert all(a > b for a, b in pairwise(f[5:]))
    assert f[20] == pytest.approx(1 / 25 / 1e4)
    # as torch's OneCycleLR there is always a warmup phase: without one it is a single step at the start value
    assert [lr_factor("onecycle", s, 20, 0) for s in (0, 1)] == pytest.approx([1 / 25, 1.0])


def test_zero_total_steps_is_safe():
    for kind in ("cosine", "onecycle", "step", "none"):
        assert math.isfinite(lr_factor(kind, 0, 0, 0))


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))


def test_sgd_is_nesterov_sgd_with_the_configured_momentum_and_one_step_is_the_update_rule():
    p = _param()
    opt = build_optimizer("sgd", [{"params": [p], "lr": 0.1, "weight_decay": 0.01}], lr=0.1, momentum=0.8)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"]
    p0 = p.detach().clone()
    grad = torch.tensor([0.5, 0.25, -1.0])
    p.grad = grad.clone()
    opt.step()
    d = grad + 0.01 * p0  # weight decay added to the gradient; first step: momentum buffer = d
    assert torch.allclose(p.detach(), p0 - 0.1 * (d + 0.8 * d))  # Nesterov: d + momentum x buffer


def test_adamw_is_not_the_sgd_update():
    p = _param()
    opt = build_optimizer("adamw", [{"params": [p], "lr": 0.1, "weight_decay": 0.01}], lr=0.1, momentum=0.8)
    assert isinstance(opt, torch.optim.AdamW)
    p0 = p.detach().clone()
    grad = torch.tensor([0.5, 0.25, -1.0])
    p.grad = grad.clone()
    opt.step()
    d = grad + 0.01 * p0
    assert not torch.allclose(p.detach(), p0 - 0.1 * 1.8 * d)
    assert torch.allclose(p.detach(), p0 * (1 - 0.1 * 0.01) - 0.1 * grad.sign(), atol=1e-6)  # Adam's first step


def test_set_lr_scales_every_group_from_its_own_base():
    a, b = _param(), _param()
    opt = build_optimizer("sgd", [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], lr=0.1, momentum=0.9)
    set_lr(opt, 0.5)
    set_lr(opt, 0.5)  # from the base LR, not compounding
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
