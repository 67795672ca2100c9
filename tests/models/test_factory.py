from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from medcls.errors import ModelError
from medcls.models import create_model, param_groups, set_backbone_trainable
from medcls.models.factory import match_models


@pytest.mark.parametrize("name,in_chans,size", [
    ("resnet18", 1, 28), ("resnet18", 3, 32), ("efficientnet_b0", 1, 64), ("densenet121", 3, 32),
    ("convnext_atto", 1, 32), ("vit_tiny_patch16_224", 3, 224),
])
def test_create_model_forward(name, in_chans, size):
    m = create_model(name, 3, in_chans=in_chans).eval()
    with torch.no_grad():
        out = m(torch.rand(2, in_chans, size, size))
    assert out.shape == (2, 3)


def test_typo_gets_did_you_mean():
    with pytest.raises(ModelError, match="Did you mean 'resnet18'"):
        create_model("resnet81", 2)


def test_pretrained_offline_fails_fast_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="pretrained weights.*model.pretrained=false"):
        create_model("resnet18", 2, pretrained=True)
    assert time.perf_counter() - t0 < 30  # not the ~47 s of hub retries


@pytest.mark.parametrize("stem,size", [("small", 14), ("tiny", 28), ("default", 7)])
def test_small_input_stems(stem, size):
    m = create_model("resnet18", 2, in_chans=1, stem=stem).eval()
    feats = {}

    def hook(mod, inp, out):
        feats["l1"] = out.shape

    m.net.layer1.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.rand(1, 1, 28, 28))
    assert feats["l1"][-1] == size


def test_stem_on_non_resnet_is_an_error():
    with pytest.raises(ModelError, match="ResNet-style"):
        create_model("efficientnet_b0", 2, stem="small")


def test_local_weights_load_and_mismatch(tmp_path):
    src = create_model("resnet18", 5, in_chans=1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, str(path))
    m = create_model("resnet18", 2, in_chans=1, weights=path)  # classifier shape differs: kept fresh
    assert torch.equal(m.net.conv1.weight, src.net.conv1.weight)
    assert m.net.fc.weight.shape == (2, 512)
    with pytest.raises(ModelError, match="not found"):
        create_model("resnet18", 2, weights=tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable"):
        create_model("resnet18", 2, weights=junk)
    other = tmp_path / "other.safetensors"
    save_file({"foo.bar": torch.zeros(3)}, str(other))
    with pytest.raises(ModelError, match="no tensor matches"):
        create_model("resnet18", 2, weights=other)


def test_freeze_and_param_groups():
    m = create_model("resnet18", 2, in_chans=1)
    set_backbone_trainable(m, False)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"net.fc.weight", "net.fc.bias"}
    set_backbone_trainable(m, True)
    groups = param_groups(m, 1e-3, 0.1, 0.05)
    by = {g["name"]: g for g in groups}
    assert by["head"]["lr"] == 1e-3 and by["backbone"]["lr"] == pytest.approx(1e-4)
    assert by["backbone_nowd"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_normalisation_inside_model():
    m = create_model("resnet18", 2, in_chans=1)
    assert m.mean.shape == (1, 1, 1, 1)
    assert float(m.mean) == pytest.approx((0.485 + 0.456 + 0.406) / 3)


def test_match_models():
    assert "resnet18" in match_models("resnet1*")


def test_pretrained_offline_fails_in_seconds_with_the_way_out(monkeypatch, caplog):
    """No hub and no cache: one clear ModelError within seconds (was ~100 s of retries), after saying what it tries."""
    import logging
    import time

    import huggingface_hub.constants

    import medcls.hub
    from medcls.errors import ModelError

    before = huggingface_hub.constants.HF_HUB_OFFLINE
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-medcls-test-cache")
    monkeypatch.setattr(medcls.hub, "hub_reachable", lambda timeout=3.0: False)
    caplog.set_level(logging.INFO, logger="medcls")
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=r"model.pretrained=false.*model.weights"):
        create_model("resnet18", 2, pretrained=True)
    assert time.perf_counter() - t0 < 10
    assert "fetching timm weights for resnet18 from the local Hugging Face cache" in caplog.text
    assert huggingface_hub.constants.HF_HUB_OFFLINE is before  # restored afterwards


def test_hub_probe_honours_hf_hub_offline(monkeypatch):
    from medcls.hub import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
