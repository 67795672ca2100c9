"""Optimisers and learning-rate schedules as pure functions of the step (trivially resumable)."""

from __future__ import annotations

import math

import torch

from ..choices import Optimizer, Scheduler, check_choice


def build_optimizer(name: str, groups: list[dict], *, lr: float, momentum: float) -> torch.optim.Optimizer:
    """The ``train.optimizer`` ``name`` over parameter ``groups`` (each remembers its ``base_lr``)."""
    check_choice(name, Optimizer, "train.optimizer")
    for g in groups:
        g["base_lr"] = g["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(kind: str, step: int, total: int, warmup: int, *, step_every: int = 1, gamma: float = 0.1) -> float:
    """Multiplier of the base LR at optimiser step ``step`` of ``total``.

    cosine: linear warmup then cosine to 0; onecycle: cosine warmup from 1/25
    then cosine to 1/1e4 (as torch's OneCycleLR); step: x gamma every
    ``step_every`` steps; none: 1.
    """
    check_choice(kind, Scheduler, "train.scheduler")
    total = max(total, 1)
    if kind == "none":
        return 1.0
    if kind == "step":
        return gamma ** (step // max(step_every, 1))
    if kind == "onecycle":
        warm = max(warmup, 1)
        if step < warm:
            lo = 1 / 25
            return lo + (1 - lo) * (1 - math.cos(math.pi * step / warm)) / 2
        t = min((step - warm) / max(total - warm, 1), 1.0)
        end = 1 / 25 / 1e4
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2
    if step < warmup:
        return (step + 1) / (warmup + 1)
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1 + math.cos(math.pi * t))


def set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
