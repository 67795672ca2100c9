"""Pictures of a CAM: the overlay and the three-panel figure."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medcls.explain import overlay, save_explanation


def test_overlay_and_figure(tmp_path):
    cam = np.zeros((28, 28), np.float32)
    cam[5:10, 5:10] = 1
    rgb = overlay(np.full((28, 28), 0.5, np.float32), cam)
    assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
    assert rgb[7, 7, 0] > rgb[7, 7, 2] and rgb[20, 20, 2] > rgb[20, 20, 0]  # hot = red, cold = blue
    p = save_explanation(tmp_path / "x.png", np.random.default_rng(0).random((28, 28, 3)), cam, "title")
    with Image.open(p) as im:
        assert im.size[0] > 2 * im.size[1]  # three panels side by side
