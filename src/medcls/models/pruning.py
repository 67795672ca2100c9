"""Structured channel pruning with torch-pruning, and the replay that rebuilds a pruned model from its history.

A pruned timm model no longer has the shapes ``timm.create_model(name)`` gives, so the
:class:`~medcls.artefact.ModelSpec` of a pruned model stores torch-pruning's *pruning
history* (which channels of which layer were removed, plain JSON): building the
unpruned model and replaying that history through a fresh ``DependencyGraph``
reproduces the pruned architecture exactly, and the stored weights then load as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..extras import require

MAX_RATIO = 0.95
METHOD = "L2-magnitude group channel pruning (torch-pruning MetaPruner, DependencyGraph-aware; classifier head kept)"


def torch_pruning():
    """The ``torch_pruning`` module, or one line saying which extra to install."""
    return require("torch_pruning", "pruning")


def check_ratio(ratio: Any) -> float:
    """``ratio`` as a float in (0, MAX_RATIO], else one line saying what was expected."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ConfigError(f"--prune must be a fraction of channels in (0, {MAX_RATIO}], got {ratio!r}") from None
    if not 0.0 < r <= MAX_RATIO:
        raise ConfigError(f"--prune must be a fraction of channels in (0, {MAX_RATIO}], got {ratio!r}")
    return r


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _head(model: nn.Module) -> list[nn.Module]:
    net = getattr(model, "net", model)
    get = getattr(net, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        raise ModelError(f"cannot find the classifier head of {type(net).__name__} (timm's get_classifier()); "
                         "pruning needs it to keep the class outputs")
    return [head]


def prune_channels(model: nn.Module, ratio: float, *, in_chans: int, size: int,
                   round_to: int | None = 8) -> list[list[Any]]:
    """Remove ``ratio`` of the channels of every prunable group of ``model`` in place; returns the history.

    Channels are ranked by the L2 norm of the whole coupled group (conv, its norm, every
    consumer), so residual connections stay consistent; the classifier head keeps its outputs.
    ``round_to`` keeps channel counts multiples of 8 where the layer is wide enough (faster kernels).
    """
    tp = torch_pruning()
    ratio = check_ratio(ratio)
    example = torch.rand(1, in_chans, size, size)
    model.eval()
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=_head(model), round_to=round_to)
    pruner.step()
    return [[name, bool(out), [int(i) for i in idx]] for name, out, idx in pruner.pruning_history()]


def replay_pruning(model: nn.Module, history: list[list[Any]], *, in_chans: int, size: int) -> nn.Module:
    """Apply a stored pruning ``history`` to a freshly built ``model`` (same architecture) in place."""
    tp = torch_pruning()
    example = torch.rand(1, in_chans, size, size)
    try:
        graph = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)
        graph.load_pruning_history([[str(n), bool(o), list(i)] for n, o, i in history])
    except (AttributeError, IndexError, TypeError, ValueError) as e:
        raise ModelError(f"the stored pruning history does not fit {type(model).__name__}: "
                         f"{type(e).__name__}: {e}") from None
    return model
