"""``create_model`` over timm: any timm name, did-you-mean on typos, clear offline errors."""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import get_args

import torch
from torch import nn

from ..choices import Stem
from ..errors import ModelError, did_you_mean

log = logging.getLogger(__name__)

STEMS = tuple(s for s in get_args(Stem) if s != "auto")  # what a model is built with (auto is resolved first)


class Classifier(nn.Module):
    """A timm network with its input normalisation inside.

    Input: float tensor (B, C, H, W) in [0, 1] (see :class:`medcls.transforms.Preprocess`).
    Output: logits (B, num_classes). Keeping mean/std here means every
    consumer (trainer, evaluator, ONNX export, server) normalises the same way.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net.get_classifier().parameters())


def list_models(pattern: str = "*") -> list[str]:
    import timm

    return timm.list_models(pattern)


def _check_name(name: str) -> None:
    import timm

    arch = name.split(".")[0]
    if timm.is_model(arch):
        return
    names = timm.list_models()
    raise ModelError(
        f"unknown model {name!r}.{did_you_mean(arch, names)} "
        f"Run `medcls models` (or `medcls models '*{arch[:4]}*'`) to list the {len(names)} timm models."
    )


def _create_timm(name: str, pretrained: bool, **kwargs) -> nn.Module:
    import contextlib

    import timm

    from ..hub import hub_reachable, offline_hub

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    online = hub_reachable()
    log.info("model.pretrained: fetching timm weights for %s %s", name,
             "from the Hugging Face hub (or its local cache)" if online else
             "from the local Hugging Face cache (the hub is unreachable or HF_HUB_OFFLINE is set)")
    try:
        with contextlib.nullcontext() if online else offline_hub():  # offline: fail in seconds, not ~47 s per file
            return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # LocalEntryNotFoundError is an OSError
        raise ModelError(
            f"could not get pretrained weights for {name!r}"
            + (" (the Hugging Face hub is unreachable and they are not in the local cache)" if not online else "")
            + f": {type(e).__name__}. Use model.pretrained=false, pass local weights with "
            f"--set model.weights=path.safetensors, or run once with network access to cache them."
        ) from None


def _small_input_stem(net: nn.Module, in_chans: int, stem: str) -> None:
    """ResNet stem for small inputs (28-64 px): 3x3 stride-1 conv; ``tiny`` also drops the max-pool."""
    conv = getattr(net, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(net, "maxpool"):
        raise ModelError(
            f"model.stem={stem} needs a ResNet-style model (conv1 + maxpool), "
            f"got {type(net).__name__}; use model.stem=default or a larger transforms.image_size"
        )
    net.conv1 = nn.Conv2d(in_chans, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    if stem == "tiny":
        net.maxpool = nn.Identity()


def load_weights(net: nn.Module, path: str | Path) -> None:
    """Load local safetensors weights; a classifier of another shape is left freshly initialised."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    try:
        state = load_file(str(p))
    except Exception as e:  # safetensors raises its own error types
        raise ModelError(f"{p} is not a readable .safetensors file: {e}") from None
    own = net.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    matched = len(set(state) & set(own))
    if matched == 0:
        raise ModelError(f"{p}: no tensor matches the model's parameters (is it for another architecture?)")
    missing, unexpected = net.load_state_dict(state, strict=False)
    log.info("loaded %d tensors from %s (%d shape-mismatched skipped: %s; %d missing; %d unexpected)",
             matched, p, len(skipped), skipped[:4], len(missing), len(unexpected))


def create_model(name: str, num_classes: int, *, in_chans: int = 3, pretrained: bool = False,
                 weights: str | Path | None = None, stem: str = "default",
                 drop_rate: float = 0.0) -> Classifier:
    """Create a timm model wrapped in :class:`Classifier` (normalisation from its pretrained config)."""
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans not in (1, 2, 3, 4):
        raise ModelError(f"in_chans must be 1-4, got {in_chans}")
    _check_name(name)
    net = _create_timm(name, pretrained, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if stem not in STEMS:
        raise ModelError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if stem != "default":
        _small_input_stem(net, in_chans, stem)
    if weights:
        load_weights(net, weights)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if in_chans != len(mean):
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return Classifier(net, mean, std)


def default_input_size(name: str) -> int:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name.split(".")[0]) if "." not in name else timm.models.get_pretrained_cfg(name)
        return int(cfg.input_size[-1]) if cfg is not None else 224
    except Exception:
        return 224


def set_backbone_trainable(model: Classifier, trainable: bool) -> None:
    head = {id(p) for p in model.head_parameters()}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(trainable)


def freeze_backbone_norms(model: Classifier) -> None:
    """Put the backbone's batch-norm layers in eval mode (call after ``model.train()``): a frozen backbone
    keeps its running statistics too, so the head learns on the features it will be served with."""
    head = {id(p) for p in model.head_parameters()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not any(id(p) in head for p in m.parameters(False)):
            m.eval()


def param_groups(model: Classifier, lr: float, backbone_lr_scale: float, weight_decay: float) -> list[dict]:
    """Head at ``lr``, backbone at ``lr * backbone_lr_scale``; no weight decay on norms and biases."""
    head = {id(p) for p in model.head_parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        key = (id(p) in head, p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (is_head, no_wd), params in sorted(groups.items()):
        out.append({"params": params, "lr": lr * (1.0 if is_head else backbone_lr_scale),
                    "weight_decay": 0.0 if no_wd else weight_decay, "name": f"{'head' if is_head else 'backbone'}{'_nowd' if no_wd else ''}"})
    return out


def match_models(pattern: str) -> list[str]:
    names = list_models()
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
