"""Dataset-aware ``auto`` defaults: epochs by dataset size, class weights by task, augmentation by modality."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from medcls.config import build_config
from medcls.defaults import (
    AUTO_KEYS,
    EPOCH_IMAGE_BUDGET,
    MAX_EPOCHS,
    MIN_EPOCHS,
    auto_ema,
    auto_epochs,
    auto_preset,
    resolve_auto,
    unresolved,
)


def fake_data(n_train: int, task: str = "binary", name: str = "pneumoniamnist", channels: int = 1):
    return SimpleNamespace(spec=SimpleNamespace(name=name, task=task, channels=channels), train=[0] * n_train)


@pytest.mark.parametrize(("n", "epochs"), [(4708, 10), (546, 88), (89_996, MIN_EPOCHS), (10, MAX_EPOCHS),
                                           (0, MIN_EPOCHS)])
def test_auto_epochs_scale_inversely_with_dataset_size(n, epochs):
    assert auto_epochs(n) == epochs
    if MIN_EPOCHS < epochs < MAX_EPOCHS:  # about the same number of images seen
        assert abs(epochs * n - EPOCH_IMAGE_BUDGET) <= n / 2


@pytest.mark.parametrize(("dataset", "channels", "preset"), [
    ("pathmnist", 3, "histology"), ("bloodmnist_64", 3, "histology"), ("dermamnist", 3, "generic"),
    ("pneumoniamnist", 1, "xray"), ("organamnist", 1, "xray"),  # kidney-left/right: no flips
    ("my-folder", 1, "xray"), ("my-folder", 3, "generic"),
])
def test_auto_preset_is_label_safe_per_modality(dataset, channels, preset):
    assert auto_preset(dataset, channels) == preset


@pytest.mark.parametrize(("epochs", "n", "batch", "accum", "decay", "on"), [
    (10, 4708, 128, 1, 0.99, True),    # PneumoniaMNIST: 370 steps leave 2% of the initial weights
    (3, 4708, 128, 1, 0.99, False),    # 111 steps: a third of the average would still be the initialisation
    (10, 4708, 128, 4, 0.99, False),   # gradient accumulation: a quarter of the optimizer steps
    (88, 546, 128, 1, 0.99, True),     # BreastMNIST at its auto epochs: 440 steps
    (100, 100, 128, 1, 0.99, False),   # 100 images: 100 steps
    (10, 4708, 128, 1, 0.999, False),  # a slower average needs ~3,000 steps
])
def test_auto_ema_needs_enough_steps_to_forget_the_initial_weights(epochs, n, batch, accum, decay, on):
    assert auto_ema(epochs, n, batch, accum, decay) is on


@pytest.mark.parametrize(("task", "weights"), [("binary", "balanced"), ("multiclass", "none"),
                                               ("multilabel", "none")])
def test_resolve_auto_fills_every_auto_and_reports_it(task, weights):
    cfg, chosen = resolve_auto(build_config({}, []), fake_data(546, task, "breastmnist", 1))
    assert (cfg.train.epochs, cfg.train.class_weights, cfg.transforms.preset) == (88, weights, "generic")
    assert chosen == {"train.epochs": 88, "train.ema": True, "train.class_weights": weights,
                      "transforms.preset": "generic"}
    assert cfg.train.ema is True
    assert unresolved(build_config({}, [])) == list(AUTO_KEYS) == list(chosen) and unresolved(cfg) == []


def test_resolve_auto_keeps_explicit_values():
    cfg = build_config({}, ["train.epochs=4", "train.class_weights=none", "transforms.preset=histology",
                            "train.ema=false"])
    out, chosen = resolve_auto(cfg, fake_data(100))
    assert chosen == {} and out is cfg


def test_bad_epochs_value_names_both_accepted_forms():
    with pytest.raises(Exception, match="auto") as e:
        build_config({}, ["train.epochs=lots"])
    assert "integer" in str(e.value)


def test_trained_run_stores_the_resolved_values(make_cfg, tmp_path, monkeypatch):
    """config.yaml holds concrete values (resume, TTA and export read it); data.json says they were chosen."""
    import json

    import medcls.defaults
    from medcls import train

    monkeypatch.setattr(medcls.defaults, "EPOCH_IMAGE_BUDGET", 96 * 4)  # 4 epochs of the 96-image train split
    cfg = make_cfg(tmp_path, limit=96)
    cfg["train"]["epochs"] = "auto"
    cfg["train"].pop("ema", None)
    run = train(cfg)
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    summary = json.loads((run.path / "data.json").read_text())
    assert summary["splits"]["train"]["n"] == 96
    assert saved["train"]["epochs"] == 4 == run.metrics()["train"]["epochs_run"]
    assert saved["train"]["class_weights"] == "balanced" and saved["transforms"]["preset"] == "xray"
    assert summary["auto"] == {"train.epochs": 4, "train.ema": False, "train.class_weights": "balanced",
                               "transforms.preset": "xray"}
    assert saved["train"]["ema"] is False


def test_defaults_train_an_rgb_multiclass_medmnist_file(tmp_path, monkeypatch):
    """No recipe: an RGB multiclass MedMNIST file (BloodMNIST layout) trains with histology augmentation,
    unweighted loss and the epochs its size calls for; its 8-view TTA and the bundle use the resolved preset."""
    import json

    import numpy as np

    import medcls.defaults
    from medcls import evaluate, train
    from medcls.engine.checkpoint import load_checkpoint
    from medcls.export import export_bundle

    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 64), ("val", 24), ("test", 24)):
        y = np.arange(n) % 8
        x = rng.integers(0, 60, (n, 28, 28, 3), dtype=np.uint8)
        x[np.arange(n), :, :, y % 3] += (20 * y[:, None, None]).astype(np.uint8)  # a colour cue per class
        arrays[f"{s}_images"], arrays[f"{s}_labels"] = x, y.reshape(n, 1).astype(np.uint8)
    npz = tmp_path / "bloodmnist.npz"
    np.savez(npz, **arrays)
    monkeypatch.setattr(medcls.defaults, "EPOCH_IMAGE_BUDGET", 64 * 3)
    monkeypatch.setattr(medcls.defaults, "EMA_MAX_INIT_WEIGHT", 0.99)  # 6 steps are "enough" here
    run = train({"output_dir": str(tmp_path / "runs"), "data": {"source": "medmnist:bloodmnist",
                 "options": {"path": str(npz)}, "min_val_size": 8},
                 "model": {"name": "resnet10t"}, "train": {"batch_size": 32, "progress": False},
                 "eval": {"tta": True, "n_bootstrap": 0}})
    cfg = run.config
    assert (cfg.train.epochs, cfg.train.class_weights, cfg.transforms.preset) == (3, "none", "histology")
    assert cfg.train.ema is True and any(k.startswith("ema/") for k in load_checkpoint(run.checkpoint_path("last"))[0])
    m = evaluate(run, "test")
    assert m["tta"]["views"] == "histology" and 0 <= m["tta"]["accuracy"] <= 1
    info = export_bundle(run, tmp_path / "bundle", onnx=False)
    bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert bundle["model"]["preset"] == info["model"]["preset"] == "histology"
