"""Pictures of a CAM: the overlay, the three-panel figure, the served PNGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medcls.explain import heatmap_rgba, image_rgb, overlay, png_bytes, save_explanation


def test_overlay_and_figure(tmp_path):
    cam = np.zeros((28, 28), np.float32)
    cam[5:10, 5:10] = 1
    rgb = overlay(np.full((28, 28), 0.5, np.float32), cam)
    assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
    assert rgb[7, 7, 0] > rgb[7, 7, 2] and rgb[20, 20, 2] > rgb[20, 20, 0]  # hot = red, cold = blue
    p = save_explanation(tmp_path / "x.png", np.random.default_rng(0).random((28, 28, 3)), cam, "title")
    with Image.open(p) as im:
        assert im.size[0] > 2 * im.size[1]  # three panels side by side


def test_served_pictures_are_upscaled_pngs_and_the_heatmap_is_transparent_where_cold():
    cam = np.zeros((28, 28), np.float32)
    cam[5:10, 5:10] = 1
    rgba = heatmap_rgba(cam)
    assert rgba.shape == (28, 28, 4) and rgba.dtype == np.uint8
    assert rgba[20, 20, 3] == 0 and rgba[7, 7, 3] == 255
    rgb = image_rgb(np.full((28, 28), 0.5, np.float32))
    assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
    with Image.open(io.BytesIO(png_bytes(rgba))) as im:
        assert im.size == (224, 224) and im.mode == "RGBA"  # 28 px x 8, nearest
    with Image.open(io.BytesIO(png_bytes(np.zeros((300, 200, 3), np.uint8)))) as im:
        assert im.size == (200, 300) and im.mode == "RGB"  # large enough: as is
