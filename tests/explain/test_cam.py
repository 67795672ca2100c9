"""Grad-CAM: target layers per timm family, a pointing game on synthetic lesions, `explain`, error mining."""

from __future__ import annotations

import contextlib
import logging
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from medcls.cli.main import main
from medcls.errors import ConfigError
from medcls.explain.cam import (
    METHODS,
    _select_errors,
    cam_sanity,
    check_method,
    choose_layer,
    compute_cam,
    mine_errors,
    overlay,
    pick_layer,
    resolve_target_layer,
    save_explanation,
)
from medcls.models import create_model
from medcls.models.factory import Classifier, _small_input_stem

FAMILIES = {"resnet18": "net.layer4.1", "densenet121": "net.features.norm5", "efficientnet_b0": "net.bn2",
            "convnext_atto": "net.stages.3", "vit_tiny_patch16_224": "net.blocks.11.norm1"}


@contextlib.contextmanager
def one_thread():
    """One intra-op thread: much faster than two on a machine shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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


def test_overlay_and_figure(tmp_path):
    cam = np.zeros((28, 28), np.float32)
    cam[5:10, 5:10] = 1
    rgb = overlay(np.full((28, 28), 0.5, np.float32), cam)
    assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
    assert rgb[7, 7, 0] > rgb[7, 7, 2] and rgb[20, 20, 2] > rgb[20, 20, 0]  # hot = red, cold = blue
    p = save_explanation(tmp_path / "x.png", np.random.default_rng(0).random((28, 28, 3)), cam, "title")
    with Image.open(p) as im:
        assert im.size[0] > 2 * im.size[1]  # three panels side by side


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


@pytest.fixture
def tiny_run(tiny_cfg):
    from medcls import train

    tiny_cfg["eval"]["n_bootstrap"] = 0
    with one_thread():
        yield train(tiny_cfg)


@pytest.fixture
def restore_logging():
    """main() binds a log handler to the (captured) stderr of this test: undo it afterwards."""
    log = logging.getLogger("medcls")
    saved = log.handlers[:], log.level, log.propagate
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def test_explain_cli(tiny_run, pneumonia_arrays, tmp_path, capsys, restore_logging):
    img = tmp_path / "x.png"
    Image.fromarray(pneumonia_arrays["test_images"][0]).save(img)
    out = tmp_path / "cam.png"
    with one_thread():
        code = main(["explain", str(tiny_run.path), str(img), "--method", "gradcam++", "-o", str(out),
                     "--target-class", "pneumonia", "--layer", "net.layer3"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "predicted" in cap.out and "p = " in cap.out and str(out) in cap.out
    with Image.open(out) as im:
        im.load()
        assert im.size[0] > 2 * im.size[1]

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert main(["explain", str(tiny_run.path), str(bad), "-o", str(tmp_path / "b.png")]) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert main(["explain", str(tiny_run.path), str(img), "--method", "gradcm", "-o", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'gradcam'" in err.lower() and err.count("\n") == 1
    assert main(["explain", str(tiny_run.path), str(img), "--target-class", "pneumona", "-o", str(out)]) == 2
    assert "did you mean 'pneumonia'" in capsys.readouterr().err.lower()
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_error_selection_binary_and_multiclass():
    df = pd.DataFrame({"id": [f"test/{i}" for i in range(6)], "label": ["neg", "neg", "neg", "pos", "pos", "pos"],
                       "prob_neg": [0.1, 0.35, 0.8, 0.9, 0.62, 0.3], "prob_pos": [0.9, 0.65, 0.2, 0.1, 0.38, 0.7]})
    binary = SimpleNamespace(spec=SimpleNamespace(class_names=["neg", "pos"], task="binary", positive_index=1))
    g = _select_errors(df, binary, 5, 0.6)  # decision threshold 0.6, not 0.5
    assert list(g["FP"]["id"]) == ["test/0", "test/1"] and list(g["FN"]["id"]) == ["test/3", "test/4"]
    assert list(_select_errors(df, binary, 1, 0.6)["FN"]["id"]) == ["test/3"]  # lowest p(positive) first
    df3 = pd.DataFrame({"id": ["a", "b", "c", "d"], "label": ["x", "x", "y", "z"], "prob_x": [0.1, 0.3, 0.5, 0.2],
                        "prob_y": [0.8, 0.6, 0.4, 0.1], "prob_z": [0.1, 0.1, 0.1, 0.7]})
    multi = SimpleNamespace(spec=SimpleNamespace(class_names=["x", "y", "z"], task="multiclass", positive_index=None))
    g = _select_errors(df3, multi, 5, 0.5)
    assert list(g["x"]["id"]) == ["a", "b"] and list(g["y"]["_pred"]) == ["x"] and g["z"].empty


def test_mine_errors_writes_fp_fn(tiny_run):
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("error")  # the 7x7 layer is chosen without a coarse-map warning
        cases = mine_errors(tiny_run, "test", k=2)  # evaluates first: no predictions.csv yet
    root = tiny_run.path / "eval-test" / "gradcam"
    df = pd.read_csv(tiny_run.path / "eval-test" / "predictions.csv")
    assert cases, "the 2-epoch tiny run should make some errors"
    assert {c["group"] for c in cases} <= {"FP", "FN"} and len(cases) <= 4
    written = sorted(root.rglob("*.png"))
    assert len(written) == len(cases) and all(p.parent.name in ("FP", "FN") for p in written)
    for c in cases:
        row = df[df["id"] == c["id"]].iloc[0]
        assert row["label"] != c["predicted"]
        assert (c["group"] == "FN") == (row["label"] == "pneumonia")
    assert (root / "cases.csv").is_file()


def test_explain_saves_the_raw_map_at_the_image_size(tiny_run, tmp_path, capsys, restore_logging):
    """`medcls explain RUN IMG -o out.png --array map.npy`: float32 in [0, 1], the image's own height x width."""
    img = tmp_path / "wide.png"
    Image.fromarray((np.arange(40 * 60) % 251).astype(np.uint8).reshape(40, 60)).save(img)
    with one_thread():
        code = main(["explain", str(tiny_run.path), str(img), "-o", str(tmp_path / "cam.png"),
                     "--array", str(tmp_path / "map.npy")])
    out = capsys.readouterr().out
    assert code == 0 and "net.layer1 (7x7 map)" in out and "map.npy" in out
    cam = np.load(tmp_path / "map.npy")
    assert cam.dtype == np.float32 and cam.shape == (40, 60) and cam.min() >= 0 and cam.max() <= 1
    assert cam.std() > 0
    assert main(["explain", str(tiny_run.path), str(img), "-o", str(tmp_path / "c.png"),
                 "--array", str(tmp_path / "map.txt")]) == 2
    assert "--array must name a .npy file" in capsys.readouterr().err


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
