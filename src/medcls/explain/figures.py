"""Pictures of class activation maps: the map coloured over its image, the map alone (RGBA, to lay over the image
with an opacity of the viewer's choice), the PNGs the server sends and the files the CLI writes (the three-panel
figure, the raw map as .npy). Small images are upscaled with nearest neighbour for display."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError

MIN_DISPLAY = 224  # images smaller than this are upscaled (nearest) for display: saved figures, served PNGs
VIEWS = ("overlay", "heatmap", "image")  # the pictures of one explained image: map over image, map alone, image


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


def heatmap_rgba(cam: np.ndarray) -> np.ndarray:
    """The jet-coloured map with its own value as opacity: cold regions stay transparent."""
    from matplotlib import colormaps

    rgba = colormaps["jet"](np.clip(cam, 0, 1))
    rgba[..., 3] = np.clip(cam, 0, 1) ** 0.7
    return (rgba * 255).astype(np.uint8)


def image_rgb(image01: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a gray or RGB ``image01`` in [0, 1]: the image as the model sees it."""
    gray = np.clip(image01, 0, 1)
    rgb = (np.repeat(gray[..., None], 3, -1) if gray.ndim == 2 else gray) * 255
    return rgb.astype(np.uint8)


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 RGB or RGBA picture as PNG, small ones upscaled (nearest): the pixels the model saw stay visible."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_upscale(picture)).save(buf, format="PNG")
    return buf.getvalue()


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


def save_map(path: str | Path, cam: np.ndarray, size: tuple[int, int]) -> Path:
    """The CAM as float32 .npy at ``size`` (the image's H, W; bilinear, as the preprocessing resized it)."""
    import cv2

    from ..utils import atomic_write_bytes

    full = cv2.resize(np.asarray(cam, np.float32), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    buf = io.BytesIO()
    np.save(buf, np.clip(full, 0, 1).astype(np.float32))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
