"""Grad-CAM (pytorch-grad-cam) for :class:`~medcls.models.Classifier`: target layers found for ResNet,
DenseNet, EfficientNet, ConvNeXt and ViT-style timm models (or named, ``"net.layer3"``), three-panel
figures, and galleries of the most confident errors of an evaluated split (``mine_errors``).
"""

from __future__ import annotations

import io
import logging
import math
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..errors import ConfigError, DataError, did_you_mean
from ..models.ensemble import ensemble_members
from ..runs import Run

log = logging.getLogger("medcls")

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "layercam": LayerCAM}
MIN_DISPLAY = 224  # images smaller than this are upscaled (nearest) in saved figures
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


def image_branch(model: nn.Module, extras: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A fused (image + metadata/text) model as an image-only one with the extras fixed; others unchanged."""
    from ..multimodal import FixedExtras, is_fused

    if not is_fused(model):
        return model
    if extras is None:
        raise ConfigError("Grad-CAM of a fused model needs one row of its metadata/text inputs (extras)")
    return FixedExtras(model, {k: torch.as_tensor(v)[:1] for k, v in extras.items()})


def map_sizes(model: nn.Module, x: torch.Tensor, extras: dict[str, torch.Tensor] | None = None
              ) -> dict[str, tuple[int, int] | None]:
    """Spatial size of every named module's output for ``x`` (None for non-map outputs), in forward order."""
    model = image_branch(model, extras)
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
                 extras: dict[str, torch.Tensor] | None = None) -> tuple[str, tuple[int, int] | None]:
    """:func:`_choose_layer`; for an ensemble, one layer per member (``members.<i>.<layer>``, comma-separated)
    and the coarsest of their grids: its CAM is the mean of the members' normalised maps."""
    members = ensemble_members(model)
    if members is None:
        return _choose_layer(model, x, layer, extras)
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
                  extras: dict[str, torch.Tensor] | None = None) -> tuple[str, tuple[int, int] | None]:
    """The layer :func:`compute_cam` uses for ``x`` and its map's grid: ``layer`` when given; else the family's
    usual layer when its map is at least ``MIN_MAP`` x ``MIN_MAP`` at this input size, otherwise the deepest
    module whose map is (ResNet-18 on 28 px: ``net.layer2``, 7x7, instead of ``net.layer4``'s 2x2, the same
    corner on every image). A map coarser than that is warned about."""
    _, name, reshape = resolve_target_layer(image_branch(model, extras), layer)
    if reshape is not None:  # a ViT block: its token grid
        grid = getattr(getattr(getattr(model, "net", model), "patch_embed", None), "grid_size", None)
        hw, sizes = ((int(grid[0]), int(grid[1])) if grid is not None else None), {}
    else:
        sizes = map_sizes(model, x, extras)
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
               extras: dict[str, torch.Tensor] | None = None) -> str:
    """The name of :func:`choose_layer`'s layer."""
    return choose_layer(model, x, layer, extras)[0]


def compute_cam(model: nn.Module, x: torch.Tensor, *, method: str = "gradcam", target_class: int | None = None,
                layer: str | None = None, extras: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """CAMs (B, H, W) in [0, 1] for ``x`` (B, C, H, W) in [0, 1]; ``target_class`` None = the argmax; layer as
    :func:`pick_layer`. Runs in eval mode; the mode, ``.grad`` and ``requires_grad`` are left as they were.
    Fused models: ``extras`` (one row of metadata/text inputs) are held fixed, the CAM is on the image branch."""
    model = image_branch(model, extras)
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


def _mean_offdiag_corr(maps: np.ndarray) -> float:
    flat = maps.reshape(len(maps), -1)
    keep = flat.std(1) > 1e-8  # constant maps have no correlation
    c = np.corrcoef(flat[keep]) if keep.sum() > 1 else np.ones((1, 1))
    return float(c[~np.eye(len(c), dtype=bool)].mean()) if len(c) > 1 else 1.0


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a.ravel(), b.ravel()).statistic
    return float(0.0 if np.isnan(r) else r)


def cam_sanity(model: nn.Module, x: torch.Tensor, *, method: str = "gradcam", layer: str | None = None,
               seed: int = 0) -> dict[str, Any]:
    """Two checks that a CAM explains *this* model on *these* images (Adebayo et al., 2018, "Sanity checks
    for saliency maps"): ``pairwise_correlation``, the mean Pearson correlation between the maps of different
    images (near 1: the same blob on every image), and ``randomisation_correlation``, the mean Spearman
    rank correlation of each map with the map of a copy of the model whose weights are re-initialised
    (near 1: the map does not depend on what the model learned)."""
    import copy

    layer, grid = choose_layer(model, x, layer)
    maps = compute_cam(model, x, method=method, layer=layer)
    random_model = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in random_model.modules():
        if hasattr(m, "reset_parameters") and m is not random_model:
            m.reset_parameters()
    random_maps = compute_cam(random_model, x, method=method, layer=layer)
    return {"layer": layer, "map_size": list(grid) if grid else None, "n_images": len(x),
            "pairwise_correlation": _mean_offdiag_corr(maps),
            "randomisation_correlation": float(np.mean([_rank_corr(a, b) for a, b in zip(maps, random_maps,
                                                                                          strict=True)]))}


def _upscale(a: np.ndarray, size: int = MIN_DISPLAY) -> np.ndarray:
    f = max(1, math.ceil(size / max(a.shape[:2])))
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1) if f > 1 else a


def overlay(image01: np.ndarray, cam: np.ndarray, *, image_weight: float = 0.5) -> np.ndarray:
    """uint8 RGB (H, W, 3): the jet-coloured ``cam`` blended over a gray or RGB ``image01`` in [0, 1]."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = np.clip(np.asarray(image01, np.float32), 0, 1)
    img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else np.broadcast_to(img, (*img.shape[:2], 3))
    if img.shape[:2] != cam.shape:
        raise ConfigError(f"image {img.shape[:2]} and CAM {cam.shape} differ in size")
    return show_cam_on_image(img, np.clip(cam, 0, 1).astype(np.float32), use_rgb=True, image_weight=image_weight)


def save_explanation(path: str | Path, image01: np.ndarray, cam: np.ndarray, title: str) -> Path:
    """PNG with three panels: image, heatmap, overlay (small images upscaled with nearest neighbour)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    img = np.clip(np.asarray(image01, np.float32), 0, 1)
    img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    big_img, big_cam = _upscale(img), _upscale(np.asarray(cam, np.float32))
    panels = [(big_img, "image", {"cmap": "gray"} if img.ndim == 2 else {}),
              (big_cam, "heatmap", {"cmap": "jet", "vmin": 0, "vmax": 1}),
              (overlay(big_img, big_cam), "overlay", {})]
    fig = Figure(figsize=(10.5, 4.1))
    axes = fig.subplots(1, 3)
    for ax, (a, name, kw) in zip(axes, panels, strict=True):
        shown = ax.imshow(a, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=13)
        ax.axis("off")
        if name == "heatmap":  # the colour scale: what red and blue mean
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.5, 1])
            bar.ax.set_yticklabels(["low", "", "high"], fontsize=11)
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _class_index(run: Run, target: int | str | None) -> int | None:
    names = list(run.spec.class_names)
    if target is None or (isinstance(target, int) and 0 <= target < len(names)):
        return target
    if target in names:
        return names.index(target)
    raise ConfigError(f"unknown class {target!r}.{did_you_mean(target, names)} Classes: {', '.join(names)}")


def _decision_threshold(run: Run, checkpoint: str) -> float:
    """The operating point ``predict`` uses for ``checkpoint`` (its calibration), else eval.threshold."""
    post = run.postprocess(checkpoint)
    return float(post.threshold if post is not None else run.config.eval.threshold)


def explain_image(run: Run, image: str | Path | np.ndarray, *, method: str = "gradcam",
                  target_class: int | str | None = None, layer: str | None = None, out_path: str | Path,
                  checkpoint: str = "best", metadata: dict[str, Any] | None = None,
                  array_path: str | Path | None = None) -> dict[str, Any]:
    """Predict one image (calibrated, at the checkpoint's operating point, as ``Predictor`` does) and save its
    CAM figure; with ``array_path`` also the raw map (float32 .npy in [0, 1], resized to the image's size).

    The CAM explains ``target_class`` (index or name), by default the predicted class.
    """
    from ..data.images import read_image

    check_method(method)
    target = _class_index(run, target_class)
    model, preprocess, post = run.artefact.load(checkpoint)
    is_file = isinstance(image, str | Path)
    arr = read_image(image, draft=preprocess.draft) if is_file else np.asarray(image)  # decoded as in training
    x = preprocess(arr).unsqueeze(0)
    extras = None
    if run.inputs is not None:  # fused models: the metadata held fixed (None: the learned "missing" inputs)
        enc, _ = run.inputs.encode_requests(1, [metadata] if metadata else None, None)
        extras = {k: torch.as_tensor(v) for k, v in enc.items()}
    elif metadata:
        raise DataError("this model uses the image only: it takes no metadata")
    with torch.no_grad():
        p = post.probabilities(model(x, **(extras or {})).float().numpy(), run.spec.task)[0]
    names = list(run.spec.class_names)
    pred = int(p.argmax()) if run.spec.task == "multilabel" else names.index(post.decide(p, run.spec))
    target = pred if target is None else target
    layer, grid = choose_layer(model, x, layer, extras)
    cam = compute_cam(model, x, method=method, target_class=target, layer=layer, extras=extras)[0]
    grid_text = f"{grid[0]}x{grid[1]} map" if grid else "map"
    title = (f"predicted {names[pred]} (p = {p[pred]:.3f}) · {method} for {names[target]} at {layer_label(layer)} "
             f"({grid_text})")
    path = save_explanation(out_path, x[0].permute(1, 2, 0).numpy(), cam, title)
    result = {"predicted": names[pred], "probability": float(p[pred]), "path": str(path), "target": names[target],
              "method": method, "layer": layer, "map_size": grid_text}
    if array_path is not None:
        size = read_image(image).shape[:2] if is_file and preprocess.draft else arr.shape[:2]  # the file's own size
        result["array"] = str(save_map(array_path, cam, size))
    return result


def save_map(path: str | Path, cam: np.ndarray, size: tuple[int, int]) -> Path:
    """The CAM as float32 .npy at ``size`` (the image's H, W; bilinear, as the preprocessing resized it)."""
    import cv2

    from ..utils import atomic_write_bytes

    full = cv2.resize(np.asarray(cam, np.float32), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    buf = io.BytesIO()
    np.save(buf, np.clip(full, 0, 1).astype(np.float32))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _select_errors(df, run: Run, k: int, threshold: float) -> dict[str, Any]:
    names, spec = list(run.spec.class_names), run.spec
    if spec.task == "binary":
        pos = names[spec.positive_index]
        p = df[f"prob_{pos}"]
        df = df.assign(_pred=np.where(p >= threshold, pos, names[1 - spec.positive_index]))
        fp = df[(df["label"] != pos) & (p >= threshold)].sort_values(f"prob_{pos}", ascending=False).head(k)
        fn = df[(df["label"] == pos) & (p < threshold)].sort_values(f"prob_{pos}", ascending=True).head(k)
        return {"FP": fp, "FN": fn}
    probs = df[[f"prob_{c}" for c in names]].to_numpy()
    df = df.assign(_pred=[names[i] for i in probs.argmax(1)], _conf=probs.max(1))
    wrong = df[df["_pred"] != df["label"]]
    return {c: wrong[wrong["label"] == c].sort_values("_conf", ascending=False).head(k) for c in names}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x"


def mine_errors(run: Run, split: str = "test", *, k: int = 8, method: str = "gradcam", checkpoint: str = "best",
                layer: str | None = None) -> list[dict[str, Any]]:
    """Grad-CAM figures of the ``k`` most confident errors per group under ``RUN/eval-<split>/gradcam/``.

    Binary: false positives (``FP/``, highest p(positive)) and false negatives (``FN/``, lowest
    p(positive)) at the checkpoint's decision threshold (its calibration, else ``eval.threshold``). Multiclass: per true
    class (``<class>/``). The CAM explains the predicted class. An existing ``gradcam/`` is replaced.
    """
    import pandas as pd

    from ..data.sources import load_data
    from ..evaluation import evaluate_run

    check_method(method)
    if run.spec.task == "multilabel":
        raise ConfigError("Grad-CAM error mining supports binary and multiclass runs, not multilabel")
    out = run.path / f"eval-{split}"
    if not (out / "predictions.csv").is_file():
        evaluate_run(run, split, checkpoint=checkpoint)
    df = pd.read_csv(out / "predictions.csv", dtype={"id": str, "label": str})
    threshold = _decision_threshold(run, checkpoint)
    groups = _select_errors(df, run, k, threshold)
    root = out / "gradcam"
    shutil.rmtree(root, ignore_errors=True)
    if not any(len(g) for g in groups.values()):
        log.info("no errors on %s to explain", split)
        return []
    table = load_data(run.config.data).split(split)
    index = {cid: i for i, cid in enumerate(table.ids)}
    model, _ = run.build_model(checkpoint)
    names, pre = list(run.spec.class_names), run.preprocess
    written: list[dict[str, Any]] = []
    chosen: tuple[str, tuple[int, int] | None] | None = None
    for group, rows in groups.items():
        for rank, r in enumerate(rows.to_dict("records"), 1):
            cid, pred = str(r["id"]), str(r["_pred"])
            if cid not in index:
                raise DataError(f"case {cid!r} of predictions.csv is not in the {split} split any more "
                                  f"(data changed since evaluation?); re-run `medcls evaluate`")
            x = pre(table.load(index[cid], draft=pre.draft)).unsqueeze(0)
            extras = run.inputs.encode_table(table.subset([index[cid]]), f"{split} split") if run.inputs else None
            if chosen is None:  # chosen (and warned about) on the first case: the input size is the same for all
                chosen = choose_layer(model, x, layer, extras)
            layer, grid = chosen
            cam = compute_cam(model, x, method=method, target_class=names.index(pred), layer=layer, extras=extras)[0]
            path = root / _safe(group) / f"{rank:02d}_{_safe(cid)}.png"
            prob = float(r[f"prob_{pred}"])
            at = f" · {layer_label(layer)} ({grid[0]}x{grid[1]})" if grid else ""
            save_explanation(path, x[0].permute(1, 2, 0).numpy(), cam,
                             f"{group} · {cid} · true {r['label']} · predicted {pred} (p = {prob:.3f}){at}")
            written.append({"id": cid, "group": group, "label": r["label"], "predicted": pred,
                            "probability": prob, "path": str(path)})
    pd.DataFrame(written).to_csv(root / "cases.csv", index=False)
    log.debug("Grad-CAM of %d errors written to %s", len(written), root)
    return written
