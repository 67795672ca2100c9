"""Trainer behaviour on tiny real data: resume equivalence, checkpoints, options."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from medcls import load_run, train
from medcls.artefact import ModelSpec
from medcls.config import build_config
from medcls.data.sources import load_data
from medcls.defaults import resolve_auto
from medcls.engine.checkpoint import load_checkpoint
from medcls.engine.losses import FocalLoss
from medcls.engine.trainer import Trainer
from medcls.errors import ConfigError, RunError
from medcls.models import Classifier
from medcls.transforms import Preprocess


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


# ------------------------------------------------------------------ the options, one Trainer at a time
# A two-convolution network on 28 px images without augmentation, in fp32, at a constant LR unless a test says
# otherwise: each option then changes one thing that can be checked exactly, in a fraction of a second.
FIXED = {"epochs": 1, "batch_size": 32, "amp": "off", "ema": False, "scheduler": "none", "warmup_epochs": 0,
         "class_weights": "none", "label_smoothing": 0.0, "weight_decay": 0.01, "lr": 0.05, "channels_last": False}


class TinyNet(torch.nn.Module):
    """Two 3x3 convolutions (BatchNorm after each with ``norm``) and a linear head, named as timm does."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for cin, cout in ((1, 8), (8, 8)):
            layers += [torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                       *([torch.nn.BatchNorm2d(cout)] if norm else []), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def get_classifier(self) -> torch.nn.Module:
        return self.fc


@pytest.fixture(scope="module")
def small_data(make_cfg, tmp_path_factory):
    """96 real images per split, loaded once for the module (trainers never modify their data)."""
    return load_data(build_config(make_cfg(tmp_path_factory.mktemp("unused"), limit=96)).data)


def _trainer(make_cfg, data, run_dir, *, n: int = 32, norm: bool = False, freeze_backbone: bool = False, **train):
    """A Trainer as ``medcls.train`` builds it, of a :class:`TinyNet`, on the first ``n`` training images."""
    raw = make_cfg(run_dir, train={**FIXED, **train})
    raw["model"] = {"stem": "default", "freeze_backbone": freeze_backbone}
    raw["transforms"] = {"strength": 0}
    data = replace(data, train=data.train.subset(range(n)))
    cfg = resolve_auto(build_config(raw), data)[0]  # as medcls.train does: the Trainer takes resolved values
    torch.manual_seed(cfg.seed)  # the same initial weights for every trainer of a test
    model = Classifier(TinyNet(norm), mean=(0.5,), std=(0.25,))
    pre = Preprocess(ModelSpec.for_config(cfg, data.spec).preprocess)
    return Trainer(cfg, data, model, pre, run_dir, device=torch.device("cpu"))


def _record_steps(trainer) -> list[dict]:
    """Before every optimizer step: each parameter with its gradient, its group's LR and weight decay."""
    steps: list[dict] = []

    def before(opt, args, kwargs):
        steps.append({"params": [(p, p.detach().clone(), p.grad.detach().clone(), g["lr"], g["weight_decay"], g["name"])
                                 for g in opt.param_groups for p in g["params"] if p.grad is not None]})

    trainer.optimizer.register_step_pre_hook(before)
    return steps


def _params(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def test_grad_accumulation_of_k_batches_equals_one_k_times_larger_batch(make_cfg, small_data, tmp_path):
    # TinyNet without BatchNorm: with it, two micro-batches of 16 would be normalised with other batch statistics
    # than one batch of 32 (and update other running statistics), so the weights could not match exactly.
    # SGD (not AdamW, whose first step is about lr x sign(gradient)) so that a gradient twice too large shows.
    big = _trainer(make_cfg, small_data, tmp_path / "big", optimizer="sgd", batch_size=32)
    acc = _trainer(make_cfg, small_data, tmp_path / "acc", optimizer="sgd", batch_size=16, grad_accum_steps=2)
    start = _params(big)
    big.fit()
    acc.fit()
    assert big.step == acc.step == 1
    a, b = _params(big), _params(acc)
    assert all(not torch.equal(a[k], start[k]) for k in a)  # every weight moved: the comparison is not vacuous
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_grad_accumulation_steps_once_per_k_micro_batches(make_cfg, small_data, tmp_path):
    counts = {}
    for k in (1, 2):  # 80 images in 5 batches of 16: 5 steps, or 2 + 1 for the remainder
        t = _trainer(make_cfg, small_data, tmp_path / str(k), n=80, batch_size=16, grad_accum_steps=k)
        calls = []
        t.optimizer.register_step_post_hook(lambda *a, calls=calls: calls.append(1))
        t.fit()
        counts[k] = (len(calls), t.step, t.steps_per_epoch)
    assert counts == {1: (5, 5, 5), 2: (3, 3, 3)}


def test_sgd_option_builds_sgd_and_a_trainer_step_is_the_sgd_update(make_cfg, small_data, tmp_path):
    t = _trainer(make_cfg, small_data, tmp_path, optimizer="sgd", momentum=0.8, backbone_lr_scale=0.1)
    assert isinstance(t.optimizer, torch.optim.SGD)
    assert {(g["momentum"], g["nesterov"]) for g in t.optimizer.param_groups} == {(0.8, True)}
    lrs = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"]) and lrs["head"] == 0.05
    steps = _record_steps(t)
    t.fit()
    (step,) = steps
    names = set()
    for p, p0, grad, lr, wd, name in step["params"]:
        d = grad + wd * p0
        assert torch.allclose(p.detach(), p0 - lr * (d + 0.8 * d), atol=1e-7)  # Nesterov, first step
        names.add(name)
    assert names == {"head", "head_nowd", "backbone", "backbone_nowd"}


def test_adamw_option_is_not_the_sgd_update(make_cfg, small_data, tmp_path):
    t = _trainer(make_cfg, small_data, tmp_path, optimizer="adamw")
    assert isinstance(t.optimizer, torch.optim.AdamW)
    steps = _record_steps(t)
    t.fit()
    p, p0, grad, lr, wd, _ = next(s for s in steps[0]["params"] if s[5] == "head")
    d = grad + wd * p0
    assert not torch.allclose(p.detach(), p0 - lr * 1.9 * d, atol=1e-7)


def test_clip_grad_norm_bounds_the_gradient_the_optimizer_sees(make_cfg, small_data, tmp_path):
    norms = {}
    for clip in (None, 1e-3):
        t = _trainer(make_cfg, small_data, tmp_path / str(clip), clip_grad_norm=clip)
        steps = _record_steps(t)
        t.fit()
        norms[clip] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, _, g, *_ in
                                                            steps[0]["params"]])).item()
    assert norms[None] > 0.01
    assert norms[1e-3] == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("scheduler,factors", [
    ("none", [1, 1, 1, 1]),
    ("step", [1, 1, 0.5, 0.5]),  # step_size is in epochs: x gamma after each 2-step epoch
    ("cosine", [1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
])
def test_scheduler_option_sets_the_lr_of_every_step(make_cfg, small_data, tmp_path, scheduler, factors):
    t = _trainer(make_cfg, small_data, tmp_path, n=64, epochs=2, scheduler=scheduler, step_size=1, gamma=0.5)
    steps = _record_steps(t)
    t.fit()
    head = [next(s[3] for s in step["params"] if s[5] == "head") for step in steps]
    assert head == pytest.approx([0.05 * f for f in factors])


def _scripted(values: list[dict]):
    it = iter(values)
    return lambda: dict(next(it))


# val metrics per epoch: the best epoch by balanced accuracy is 2, by auc 3, by loss (lowest) 2
VAL = [{"loss": 0.90, "auc": 0.70, "balanced_accuracy": 0.60}, {"loss": 0.80, "auc": 0.75, "balanced_accuracy": 0.70},
       {"loss": 0.85, "auc": 0.80, "balanced_accuracy": 0.65}, {"loss": 0.95, "auc": 0.78, "balanced_accuracy": 0.66},
       {"loss": 0.70, "auc": 0.90, "balanced_accuracy": 0.69}, {"loss": 0.60, "auc": 0.95, "balanced_accuracy": 0.90}]


@pytest.mark.parametrize("monitor,patience,best,run", [
    ("balanced_accuracy", 2, 2, 4), ("balanced_accuracy", 1, 2, 3), ("loss", 2, 2, 4), ("auc", 1, 3, 4),
    ("balanced_accuracy", None, 6, 6),
])
def test_monitor_picks_the_best_epoch_and_early_stopping_counts_epochs_without_improvement(
        make_cfg, small_data, tmp_path, monitor, patience, best, run):
    t = _trainer(make_cfg, small_data, tmp_path, epochs=6, monitor=monitor, early_stopping_patience=patience)
    t.validate = _scripted(VAL)  # scripted validation metrics: the epochs themselves train for real
    summary = t.fit()
    assert (summary["best_epoch"], summary["epochs_run"]) == (best, run)
    assert summary["best_value"] == VAL[best - 1][monitor]
    _, meta = load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    assert meta["epoch"] == best


def test_focal_loss_and_balanced_class_weights_reach_the_trainer(make_cfg, small_data, tmp_path):
    t = _trainer(make_cfg, small_data, tmp_path, n=96, loss="focal", focal_gamma=2.0, class_weights="balanced")
    y = small_data.train.labels[:96]
    w = len(y) / (2 * np.bincount(y, minlength=2))
    assert np.allclose(t.criterion.weight.numpy(), w) and w[0] > 1.2  # the rarer class (normal) weighs more
    logits, target = torch.tensor([[math.log(9.0), 0.0]]), torch.tensor([0])  # p = 0.9 for the true class
    assert t.criterion(logits, target).item() == pytest.approx(w[0] * 0.1**2 * -math.log(0.9), rel=1e-5)
    assert isinstance(t.criterion, FocalLoss)


@pytest.mark.parametrize("sampler", ["random", "balanced"])
def test_sampler_option_sets_the_order_the_trainer_reads(make_cfg, small_data, tmp_path, sampler):
    t = _trainer(make_cfg, small_data, tmp_path, n=96, sampler=sampler)
    orders = []
    t.train_batches.iterate = lambda order, **kw: orders.append(order) or iter(())  # the order only, no batches
    t.validate = _scripted([{"loss": 1.0, "auc": 0.5}])
    t.fit()
    (order,) = orders
    y = small_data.train.labels[:96]
    assert y.mean() > 0.6  # PneumoniaMNIST: most training images show pneumonia
    if sampler == "random":
        assert np.array_equal(np.sort(order), np.arange(96))
    else:
        assert len(np.unique(order)) < 96 and abs(y[order].mean() - 0.5) < abs(y.mean() - 0.5)


def test_frozen_backbone_keeps_its_weights_and_batch_norm_statistics(make_cfg, small_data, tmp_path):
    t = _trainer(make_cfg, small_data, tmp_path, norm=True, freeze_backbone=True)
    head = {k for k, _ in t.model.named_parameters() if k.startswith("net.fc.")}
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert any("running_mean" in k for k in before) and head
    t.fit()
    after = t.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == head


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("off", torch.float32)])
def test_amp_option_runs_the_training_forward_in_that_precision(make_cfg, small_data, tmp_path, amp, dtype):
    t = _trainer(make_cfg, small_data, tmp_path, amp=amp)
    seen = []
    t.model.register_forward_hook(lambda m, args, out: seen.append((m.training, out.dtype)))
    t.fit()
    assert {d for training, d in seen if training} == {dtype}


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_option_sets_the_memory_format(make_cfg, small_data, tmp_path, channels_last):
    t = _trainer(make_cfg, small_data, tmp_path, channels_last=channels_last)
    # layouts differ only for weights and activations with more than one channel and pixel
    convs = [m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d) and min(m.weight.shape[1:]) > 1]
    inner = []
    convs[0].register_forward_hook(lambda m, args, out: inner.append(out.is_contiguous()))
    t.fit()
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) == channels_last for c in convs)
    assert all(c.weight.is_contiguous() != channels_last for c in convs)
    assert set(inner) == {not channels_last}


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
