"""Class activation maps (pytorch-grad-cam) of a :class:`~medcls.models.Classifier`: the methods, the target
layer found for ResNet, DenseNet, EfficientNet, ConvNeXt and ViT-style timm models (or named, ``"net.layer3"``),
the layer chosen for an input size (a map of at least ``MIN_MAP`` x ``MIN_MAP``), one layer per ensemble member,
fused models explained on their image branch, and :func:`compute_cam`.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..errors import ConfigError, did_you_mean
from ..models.ensemble import ensemble_members

log = logging.getLogger("medcls")

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "layercam": LayerCAM}
MIN_MAP = 7  # CAM grids coarser than 7x7 (ResNet's layer4 at 224 px) cannot localise: chosen against, warned


def check_method(method: str) -> type:
    if method not in METHODS:
        raise ConfigError(f"unknown CAM method {method!r}.{did_you_mean(method, METHODS)} "
                          f"Methods: {', '.join(METHODS)}")
    return METHODS[method]


def _vit_reshape(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tokens (B, prefix + H*W, C) -> (B, C, H, W), dropping class/register tokens."""
    prefix = int(getattr(net, "num_prefix_tokens", 1))
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        tokens = t[:, prefix:, :]
        n = tokens.shape[1]
        h, w = (int(grid[0]), int(grid[1])) if grid is not None and grid[0] * grid[1] == n else (math.isqrt(n),) * 2
        if h * w != n:
            raise ConfigError(f"cannot reshape {n} ViT tokens into a square grid")
        return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def _auto_layer(net: nn.Module) -> str:
    """Dotted name (relative to ``net``) of the usual Grad-CAM layer."""
    if hasattr(net, "layer4") and isinstance(net.layer4, nn.Sequential):  # ResNet family
        return f"layer4.{len(net.layer4) - 1}"
    if hasattr(getattr(net, "features", None), "norm5"):  # DenseNet (norm5 includes the ReLU)
        return "features.norm5"
    if hasattr(net, "conv_head"):  # EfficientNet / MobileNet: bn2 (norm + act) after conv_head
        return "bn2" if hasattr(net, "bn2") else "conv_head"
    if isinstance(getattr(net, "stages", None), nn.Sequential) and len(net.stages):  # ConvNeXt & co
        return f"stages.{len(net.stages) - 1}"
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(blocks[-1], "norm1"):  # ViT-style
        return f"blocks.{len(blocks) - 1}.norm1"
    last = next((n for n, m in reversed(list(net.named_modules())) if isinstance(m, nn.Conv2d)), None)
    if last is None:
        raise ConfigError(f"no convolutional layer found in {type(net).__name__}; pass a layer name (--layer)")
    return last


def resolve_target_layer(model: nn.Module, name: str | None = None) -> tuple[nn.Module, str, Callable | None]:
    """(module, dotted name from the Classifier, reshape transform or None) for Grad-CAM."""
    modules = dict(model.named_modules())
    net = getattr(model, "net", model)
    prefix = "net." if net is not model else ""
    name = prefix + _auto_layer(net) if name is None else name
    if name not in modules and prefix + name in modules:  # "layer3" also accepted for "net.layer3"
        name = prefix + name
    if name not in modules or name == "":
        top = [prefix + n for n, _ in net.named_children()]
        raise ConfigError(f"no layer named {name!r} in {type(net).__name__}.{did_you_mean(name, [n for n in modules if n])} "
                          f"Top-level layers: {', '.join(top)} (sub-layers with dots).")
    vit = re.search(r"(^|\.)blocks\.\d+(\.|$)", name) and hasattr(net, "num_prefix_tokens")
    return modules[name], name, _vit_reshape(net) if vit else None


def image_branch(model: nn.Module, side_inputs: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A fused (image + metadata/text) model as an image-only one with the side_inputs fixed; others unchanged."""
    from ..multimodal import FixedSideInputs, is_fused

    if not is_fused(model):
        return model
    if side_inputs is None:
        raise ConfigError("Grad-CAM of a fused model needs one row of its metadata/text inputs (side_inputs)")
    return FixedSideInputs(model, {k: torch.as_tensor(v)[:1] for k, v in side_inputs.items()})


def map_sizes(model: nn.Module, x: torch.Tensor, side_inputs: dict[str, torch.Tensor] | None = None
              ) -> dict[str, tuple[int, int] | None]:
    """Spatial size of every named module's output for ``x`` (None for non-map outputs), in forward order."""
    model = image_branch(model, side_inputs)
    seen: dict[str, tuple[int, int] | None] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(
        n, tuple(o.shape[2:]) if isinstance(o, torch.Tensor) and o.ndim == 4 else None))
        for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x[:1].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def choose_layer(model: nn.Module, x: torch.Tensor, layer: str | None = None,
                 side_inputs: dict[str, torch.Tensor] | None = None) -> tuple[str, tuple[int, int] | None]:
    """:func:`_choose_layer`; for an ensemble, one layer per member (``members.<i>.<layer>``, comma-separated)
    and the coarsest of their grids: its CAM is the mean of the members' normalised maps."""
    members = ensemble_members(model)
    if members is None:
        return _choose_layer(model, x, layer, side_inputs)
    chosen = [_choose_layer(m, x, n) for m, n in zip(members, _member_layers(members, layer), strict=True)]
    grids = [hw for _, hw in chosen if hw is not None]
    return (",".join(f"members.{i}.{n}" for i, (n, _) in enumerate(chosen)),
            min(grids, key=min) if grids else None)


def layer_label(layer: str) -> str:
    """A layer name for a figure title: an ensemble's ``members.0.net.layer2,members.1.net.layer2`` as
    ``net.layer2 of each of 2 members``."""
    parts = layer.split(",")
    rest = {re.sub(r"^members\.\d+\.", "", p) for p in parts}
    if len(parts) > 1 and len(rest) == 1:
        return f"{rest.pop()} of each of {len(parts)} members"
    return layer


def _member_layers(members: nn.ModuleList, layer: str | None) -> list[str | None]:
    """``layer`` as one entry per member: None, a name every member has, or ``members.<i>.<name>,...``."""
    k = len(members)
    if layer is None or not layer.startswith("members."):
        return [layer] * k
    parts = [p.strip() for p in layer.split(",")]
    found = {int(m.group(1)): m.group(2) for m in (re.fullmatch(r"members\.(\d+)\.(.+)", p) for p in parts) if m}
    if len(found) != len(parts) or sorted(found) != list(range(k)):
        raise ConfigError(f"an ensemble of {k} members takes one layer name for all (e.g. 'net.layer3') or one per "
                          f"member ('members.0.net.layer3,members.1.net.layer3'), got {layer!r}")
    return [found[i] for i in range(k)]


def _choose_layer(model: nn.Module, x: torch.Tensor, layer: str | None = None,
                  side_inputs: dict[str, torch.Tensor] | None = None) -> tuple[str, tuple[int, int] | None]:
    """The layer :func:`compute_cam` uses for ``x`` and its map's grid: ``layer`` when given; else the family's
    usual layer when its map is at least ``MIN_MAP`` x ``MIN_MAP`` at this input size, otherwise the deepest
    module whose map is (ResNet-18 on 28 px: ``net.layer2``, 7x7, instead of ``net.layer4``'s 2x2, the same
    corner on every image). A map coarser than that is warned about."""
    _, name, reshape = resolve_target_layer(image_branch(model, side_inputs), layer)
    if reshape is not None:  # a ViT block: its token grid
        grid = getattr(getattr(getattr(model, "net", model), "patch_embed", None), "grid_size", None)
        hw, sizes = ((int(grid[0]), int(grid[1])) if grid is not None else None), {}
    else:
        sizes = map_sizes(model, x, side_inputs)
        hw = sizes.get(name)
    if layer is None and hw is not None and min(hw) < MIN_MAP:
        fine = [n for n, s in sizes.items() if s is not None and min(s) >= MIN_MAP]
        if fine:
            log.debug("Grad-CAM: %s gives a %dx%d map for %dx%d inputs; using %s (%dx%d)",
                      name, *hw, *x.shape[2:], fine[-1], *sizes[fine[-1]])
            name, hw = fine[-1], sizes[fine[-1]]
    if hw is not None and min(hw) < MIN_MAP:
        warnings.warn(f"Grad-CAM at {name} is a coarse {hw[0]}x{hw[1]} map for {x.shape[2]}x{x.shape[3]} inputs: "
                      f"it cannot localise finer than 1/{min(hw)} of the image (choose an earlier layer)", stacklevel=3)
    return name, hw


def pick_layer(model: nn.Module, x: torch.Tensor, layer: str | None = None,
               side_inputs: dict[str, torch.Tensor] | None = None) -> str:
    """The name of :func:`choose_layer`'s layer."""
    return choose_layer(model, x, layer, side_inputs)[0]


def compute_cam(model: nn.Module, x: torch.Tensor, *, method: str = "gradcam", target_class: int | None = None,
                layer: str | None = None, side_inputs: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """CAMs (B, H, W) in [0, 1] for ``x`` (B, C, H, W) in [0, 1]; ``target_class`` None = the argmax; layer as
    :func:`pick_layer`. Runs in eval mode; the mode, ``.grad`` and ``requires_grad`` are left as they were.
    Fused models: ``side_inputs`` (one row of metadata/text inputs) are held fixed, the CAM is on the image branch."""
    model = image_branch(model, side_inputs)
    cls = check_method(method)
    if x.ndim != 4:
        raise ConfigError(f"expected an input of shape (B, C, H, W), got {tuple(x.shape)}")
    modules, reshape = _target_modules(model, pick_layer(model, x, layer))
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    # gradients flow from the input instead of the weights: no .grad is written, frozen models work too
    x = x.detach().to(next(model.parameters()).device).float().clone().requires_grad_(True)
    model.requires_grad_(False)
    cam = cls(model=model, target_layers=modules, reshape_transform=reshape)  # sets eval mode, adds hooks
    try:
        targets = None if target_class is None else [ClassifierOutputTarget(int(target_class))] * len(x)
        with torch.enable_grad():
            out = cam(input_tensor=x, targets=targets)
    finally:
        cam.activations_and_grads.release()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return np.clip(np.nan_to_num(np.asarray(out, np.float32)), 0.0, 1.0)


def _target_modules(model: nn.Module, name: str) -> tuple[list[nn.Module], Callable | None]:
    """The CAM's target layer(s) and reshape: an ensemble's comma-separated ``members.<i>.<layer>`` names give one
    layer per member (pytorch-grad-cam averages their normalised maps)."""
    members = ensemble_members(model)
    if members is None:
        module, _, reshape = resolve_target_layer(model, name)
        return [module], reshape
    found = [resolve_target_layer(m, n) for m, n in zip(members, _member_layers(members, name), strict=True)]
    reshapes = {r is None for _, _, r in found}
    if len(reshapes) > 1:
        raise ConfigError("Grad-CAM of an ensemble that mixes ViT-style and convolutional members is not supported; "
                          "explain the members one by one")
    return [m for m, _, _ in found], found[0][2]
