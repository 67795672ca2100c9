"""Trainer behaviour on tiny real data: resume equivalence, checkpoints, options."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from medcls import load_run, train
from medcls.engine.checkpoint import load_checkpoint
from medcls.errors import ConfigError, RunError


def _history(run) -> list[dict]:
    with open(run.path / "history.csv") as f:
        return list(csv.DictReader(f))


def _weights(run, which="last", prefix="model/"):
    tensors, meta = load_checkpoint(run.checkpoint_path(which))
    return {k: v for k, v in tensors.items() if k.startswith(prefix)}, meta


def test_train_writes_complete_run(tiny_cfg):
    run = train(tiny_cfg)
    for f in ("config.yaml", "model.json", "env.json", "data.json", "postprocess.json", "history.csv", "metrics.json",
              "checkpoints/best.safetensors", "checkpoints/last.safetensors", "checkpoints/best.json"):
        assert (run.path / f).is_file(), f
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r["val_auc"]) <= 1 for r in rows)
    env = json.loads((run.path / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    m = run.metrics()["train"]
    assert m["best_epoch"] in (1, 2) and m["monitor"] == "auc"
    # the checkpoint is safetensors with metadata, never a pickle
    assert (run.path / "checkpoints/last.safetensors").read_bytes()[:8] != b"\x80\x02\x8a\n"
    _, meta = _weights(run)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2


def test_resume_matches_uninterrupted_run(tiny_cfg, tmp_path):
    cfg = {**tiny_cfg, "train": {**tiny_cfg["train"], "epochs": 3, "ema": True}}
    full = train(cfg, run_dir=tmp_path / "full")

    def stop_after_two(trainer, epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "part", callbacks=[stop_after_two])
    part = load_run(tmp_path / "part")
    _, meta = _weights(part)
    assert meta["epoch"] == 2  # two epochs done (1-based, as in best.json and history.csv)
    resumed = train(resume=part.path)
    a, _ = _weights(full, prefix="")
    b, _ = _weights(resumed, prefix="")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    hist_full = _history(full)
    hist_res = _history(resumed)
    assert [r["train_loss"] for r in hist_full] == [r["train_loss"] for r in hist_res]


def test_last_checkpoint_of_an_ema_run_serves_the_averaged_weights(tiny_cfg, tmp_path):
    cfg = {**tiny_cfg, "train": {**tiny_cfg["train"], "epochs": 2, "ema": True, "ema_decay": 0.5}}
    run = load_run(train(cfg, run_dir=tmp_path / "ema").path)
    raw, _ = _weights(run, "last", "model/")
    avg, _ = _weights(run, "last", "ema/")
    model, _ = run.build_model("last")
    state = model.state_dict()
    key = next(k for k in avg if avg[k].is_floating_point() and not torch.equal(avg[k], raw["model/" + k[4:]]))
    assert torch.equal(state[key[4:]], avg[key])  # the EMA weights, not the raw ones
    assert not torch.equal(state[key[4:]], raw["model/" + key[4:]])
    best, _ = run.build_model("best")  # best stores the EMA weights too: the same kind of model
    if run.metrics()["train"]["best_epoch"] == 2:
        assert all(torch.equal(best.state_dict()[k], state[k]) for k in state)


def test_resume_rejects_non_train_overrides_and_missing_runs(tiny_cfg, tmp_path):
    with pytest.raises(RunError, match="not found"):
        train(resume=tmp_path / "nope")
    run = train({**tiny_cfg, "train": {**tiny_cfg["train"], "epochs": 1}})
    with pytest.raises(ConfigError, match="only train"):
        train(resume=run.path, overrides=["model.name=resnet34"])
    more = train(resume=run.path, overrides=["train.epochs=2", "train.class_weights=auto"])
    assert len(_history(more)) == 2
    assert more.config.train.class_weights == "balanced"  # an auto of a resume is resolved and stored too


def test_the_trainer_refuses_unresolved_auto_values(tmp_path):
    from medcls.config import build_config
    from medcls.engine.trainer import Trainer

    cfg = build_config({}, ["train.epochs=3", "train.ema=false"])
    with pytest.raises(ConfigError, match=r"got train.class_weights=auto, transforms.preset=auto: pass medcls.defaults"):
        Trainer(cfg, None, None, None, tmp_path, device=torch.device("cpu"))


def test_existing_run_dir_is_never_overwritten(tiny_cfg, tmp_path):
    d = tmp_path / "taken"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    with pytest.raises(RunError, match="already exists"):
        train(tiny_cfg, run_dir=d)
    assert (d / "precious.txt").read_text() == "keep me"
    assert not (d / "checkpoints").exists()


@pytest.mark.parametrize("overrides", [
    ["train.loss=focal", "train.class_weights=balanced", "train.sampler=balanced"],
    ["train.optimizer=sgd", "train.scheduler=step", "train.step_size=1", "train.clip_grad_norm=1.0",
     "train.grad_accum_steps=2"],
    ["train.head_only_epochs=1", "train.scheduler=cosine", "train.monitor=balanced_accuracy",
     "train.early_stopping_patience=1", "train.epochs=4"],
    ["model.freeze_backbone=true", "train.amp=bf16", "train.channels_last=false", "train.backbone_lr_scale=0.1"],
])
def test_training_options_run(tiny_cfg, overrides):
    if not any(o.startswith("train.epochs") for o in overrides):
        overrides = [*overrides, "train.epochs=2"]
    run = train(tiny_cfg, overrides=overrides)
    assert run.checkpoint_path("best").is_file()
    hist = _history(run)
    assert all(float(r["train_loss"]) > 0 for r in hist)


def test_head_only_and_frozen_backbone_keep_backbone_weights(tiny_cfg):
    run = train(tiny_cfg, overrides=["train.head_only_epochs=2", "train.epochs=2"])
    init = train(tiny_cfg, overrides=["train.epochs=1", "train.lr=1e-12", "train.head_only_epochs=1"])
    a, _ = _weights(run)
    b, _ = _weights(init)
    # backbone conv weights untouched by head-only epochs (same seed => same init)
    assert torch.equal(a["model/net.conv1.weight"], b["model/net.conv1.weight"])
    assert not torch.equal(a["model/net.fc.weight"], b["model/net.fc.weight"])


def _two_stage(tiny_cfg, epochs: int = 3) -> dict:
    """head_only_epochs=2 then all layers, backbone at 0.1 x lr, EMA off (so the raw weights are checked)."""
    return {**tiny_cfg, "train": {**tiny_cfg["train"], "epochs": epochs, "head_only_epochs": 2,
                                  "backbone_lr_scale": 0.1, "ema": False}}


def test_two_stage_freezes_backbone_then_trains_all_layers_at_scaled_lr(tiny_cfg, tmp_path):
    states, lrs = [], []

    def snapshot(trainer, epoch, row):
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        lrs.append({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})

    train(_two_stage(tiny_cfg), run_dir=tmp_path / "run", callbacks=[snapshot])
    head = {k for k in states[0] if k.startswith("net.fc.")}
    backbone = [k for k in states[0] if k not in head and states[0][k].is_floating_point()]
    assert head and any("running_mean" in k for k in backbone)

    def changed(a, b, keys):
        return {k for k in keys if not torch.equal(a[k], b[k])}

    assert changed(states[0], states[1], backbone) == set()  # stage 1: weights and BN statistics fixed
    assert changed(states[0], states[1], head) == head
    assert changed(states[1], states[2], head) == head  # stage 2: every layer learns
    assert {k for k in changed(states[1], states[2], backbone) if k.endswith(".weight")} == {
        k for k in backbone if k.endswith(".weight")}
    for lr in lrs:  # the backbone groups run at 0.1 x the head's LR through the whole schedule
        assert lr["backbone"] == pytest.approx(0.1 * lr["head"]) and lr["backbone_nowd"] == pytest.approx(
            0.1 * lr["head_nowd"])


@pytest.mark.parametrize("stop_after", [0, 1])  # inside stage 1; at the switch to stage 2
def test_two_stage_resume_matches_uninterrupted_run(tiny_cfg, tmp_path, stop_after):
    cfg = _two_stage(tiny_cfg)
    full = train(cfg, run_dir=tmp_path / "full")

    def stop(trainer, epoch, row):
        if epoch == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "part", callbacks=[stop])
    resumed = train(resume=tmp_path / "part")
    a, _ = _weights(full, prefix="")
    b, meta = _weights(resumed, prefix="")
    assert a.keys() == b.keys() and any(k.startswith("optim/") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    _, full_meta = _weights(full)
    assert meta["optimizer"]["param_groups"] == full_meta["optimizer"]["param_groups"]


def test_bad_monitor_is_reported_before_training(tiny_cfg):
    with pytest.raises(ConfigError, match="Did you mean 'auc'"):
        train(tiny_cfg, overrides=["train.monitor=auk"])
