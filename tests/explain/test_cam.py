"""CAM computation: target layers per timm family, methods, the layer chosen per input size, and a pointing game
on synthetic lesions."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import timm
import torch

from medcls.errors import ConfigError
from medcls.explain import METHODS, check_method, choose_layer, compute_cam, pick_layer, resolve_target_layer
from medcls.models import create_model
from medcls.models.factory import Classifier, _small_input_stem

from .conftest import one_thread

FAMILIES = {"resnet18": "net.layer4.1", "densenet121": "net.features.norm5", "efficientnet_b0": "net.bn2",
            "convnext_atto": "net.stages.3", "vit_tiny_patch16_224": "net.blocks.11.norm1"}


def build(name: str, in_chans: int) -> tuple[Classifier, int]:
    if name.startswith("vit"):  # create_model has no img_size: wrap a 32 px ViT directly
        net = timm.create_model(name, pretrained=False, num_classes=2, in_chans=in_chans, img_size=32)
        return Classifier(net, (0.5,) * in_chans, (0.5,) * in_chans), 32
    return create_model(name, 2, in_chans=in_chans), 64  # 64 px: a 2x2 last feature map


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_target_layer_and_cam_shape(name, in_chans):
    torch.manual_seed(0)
    model, size = build(name, in_chans)
    module, layer, reshape = resolve_target_layer(model)
    assert layer == FAMILIES[name] and module is dict(model.named_modules())[layer]
    assert (reshape is not None) == name.startswith("vit")
    x = torch.rand(2, in_chans, size, size)
    with one_thread():
        cam = compute_cam(model, x, method="gradcam", target_class=1)
    assert cam.shape == (2, size, size) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert model.training and all(p.grad is None for p in model.parameters())  # mode restored, no grads


def test_methods_layer_override_and_did_you_mean():
    torch.manual_seed(0)
    model = create_model("resnet18", 3, in_chans=1)
    model.train()
    model.net.fc.weight.requires_grad_(False)  # a partly frozen model keeps its flags
    x = torch.rand(1, 1, 64, 64)
    with one_thread():
        for method in METHODS:
            cam = compute_cam(model, x, method=method, layer="net.layer3")
            assert cam.shape == (1, 64, 64) and cam.min() >= 0 and cam.max() <= 1
    assert model.training and not model.net.fc.weight.requires_grad and model.net.fc.bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not model.net.layer3._forward_hooks  # the CAM's hooks were removed
    assert resolve_target_layer(model, "net.layer3")[1] == "net.layer3"
    assert resolve_target_layer(model, "layer2")[1] == "net.layer2"
    with pytest.raises(ConfigError, match=r"(?i)no layer named 'net.layr3'.*did you mean 'net.layer3'.*net.layer4"):
        resolve_target_layer(model, "net.layr3")
    with pytest.raises(ConfigError, match=r"(?i)unknown CAM method 'gradcam\+'.*did you mean .*'gradcam'"):
        check_method("gradcam+")


def test_coarse_maps_fall_back_to_a_7x7_layer_and_explicit_coarse_layers_are_warned(caplog):
    """ResNet-18 with its default stem has a 1x1 layer4 on 28 px MedMNIST images: a flat, useless CAM.
    The default is the deepest layer with a map of at least 7x7; a layer named coarser than that is kept,
    with a warning saying how coarse it is."""
    torch.manual_seed(0)
    model = create_model("resnet18", 2, in_chans=1)
    x = torch.rand(2, 1, 28, 28)
    assert pick_layer(model, torch.rand(1, 1, 224, 224)) == "net.layer4.1"  # 7x7 at 224 px: the usual layer
    assert pick_layer(model, torch.rand(1, 1, 64, 64)) == "net.layer2"  # 2x2 at 64 px: layer2's 8x8 instead
    caplog.set_level(logging.DEBUG, logger="medcls")
    assert pick_layer(model, x) == "net.layer1"  # layer1 is 7x7 at 28 px
    assert "net.layer4.1 gives a 1x1 map for 28x28 inputs; using net.layer1 (7x7)" in caplog.text
    with pytest.warns(UserWarning, match=r"net.layer4 is a coarse 1x1 map for 28x28 inputs"):
        assert pick_layer(model, x, "net.layer4") == "net.layer4"  # an explicit layer is never replaced
    with one_thread():
        cam = compute_cam(model, x, method="eigencam")
    assert cam.shape == (2, 28, 28) and cam.std() > 0.05
    assert choose_layer(model, x) == ("net.layer1", (7, 7))


def lesions(n: int, rng: np.random.Generator, size: int = 32, lesion: int = 10):
    """Noise images; class 1 has a bright lesion square, class 0 a dim distractor square."""
    x = rng.normal(0.3, 0.05, (n, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = rng.integers(0, size - lesion + 1, (n, 2))
    for i, (r, c) in enumerate(boxes):
        x[i, 0, r : r + lesion, c : c + lesion] += 0.5 if y[i] else 0.1
    return torch.from_numpy(np.clip(x, 0, 1)), torch.from_numpy(y), boxes


def pointing(cams: np.ndarray, boxes: np.ndarray, lesion: int, tol: int = 2) -> float:
    peaks = np.array([np.unravel_index(c.argmax(), c.shape) for c in cams])
    return float(np.mean(np.all((peaks >= boxes - tol) & (peaks < boxes + lesion + tol), axis=1)))


def test_pointing_game_on_synthetic_lesions():
    """Grad-CAM of a trained ResNet-18 must point at the lesion that decides the class.

    Small stem and output stride 16 give a 4x4 last feature map at 32 px. Note that the heatmap is
    upsampled with pixel-centre alignment while timm's stride-2 convs centre their cells at 8*i,
    which shifts the peak by about +3 px; a 10 px lesion keeps the check meaningful despite that.
    """
    lesion = 10
    rng = np.random.default_rng(0)
    xtr, ytr, _ = lesions(600, rng, lesion=lesion)
    xte, yte, bte = lesions(200, rng, lesion=lesion)
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=2, in_chans=1, output_stride=16)
    _small_input_stem(net, 1, "small")
    model = Classifier(net, (0.45,), (0.226,))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with one_thread():
        for _ in range(4):
            model.train()
            for idx in torch.randperm(len(xtr)).split(32):
                loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                acc = (model(xte).argmax(1) == yte).float().mean().item()
            if acc > 0.9:
                break
        assert acc > 0.9, acc
        pos = (yte == 1).numpy()
        cams = compute_cam(model, xte[pos], method="gradcam", target_class=1)
    assert resolve_target_layer(model)[1] == "net.layer4.1" and cams.shape == (pos.sum(), 32, 32)
    score = pointing(cams, bte[pos], lesion)
    chance = pointing(cams, np.roll(bte[pos], 1, axis=0), lesion)  # the same maps against other images' boxes
    print(f"pointing game: {score:.3f} (accuracy {acc:.3f}, shuffled-box baseline {chance:.3f})")
    assert score >= 0.7 and score - chance >= 0.3
