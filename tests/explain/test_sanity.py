"""Grad-CAM sanity checks on the default recipe's model."""

from __future__ import annotations

import torch

from medcls.explain import cam_sanity

from .conftest import one_thread


def test_default_recipe_maps_differ_between_images_and_depend_on_the_weights(evaluated_run, pneumonia_arrays):
    """The default recipe's model and input size (ResNet-18, small stem, 28 px): Grad-CAM at net.layer4.1 was a
    2x2 map, the same corner on every image. Now: maps of 16 test images differ (mean pairwise correlation
    < 0.9) and change when the weights are re-initialised (Adebayo et al.'s randomisation check)."""
    model, pre, _ = evaluated_run.artefact.load("best")
    x = torch.stack([pre(pneumonia_arrays["test_images"][i]) for i in range(16)])
    with one_thread():
        s = cam_sanity(model, x)
    print(s)
    assert s["layer"] == "net.layer2" and s["map_size"] == [7, 7]
    assert s["pairwise_correlation"] < 0.9
    assert s["randomisation_correlation"] < 0.5
