"""The training loop: plain PyTorch, readable, resumable, DDP-ready.

Every random choice (batch order, augmentation, dropout) is seeded from
(seed, epoch, rank), so a run interrupted after epoch k and resumed from its
``last`` checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..data.sources import LoadedData
from ..defaults import unresolved
from ..errors import ConfigError
from ..metrics import compute_metrics
from ..models import Classifier, freeze_backbone_norms, param_groups, set_backbone_trainable
from ..transforms import Preprocess, build_augment
from ..utils import atomic_write_json, atomic_write_text
from .cache import MemoryBudget, memory_budget
from .checkpoint import (
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from .distributed import DistInfo, check_in_sync
from .loader import Batches, Waited, epoch_order
from .losses import build_loss, class_weights
from .mixing import mix_batch
from .predict import predict_logits, probabilities
from .schedule import build_optimizer, lr_factor, set_lr

log = logging.getLogger("medcls")

Callback = Callable[["Trainer", int, dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use auto or cpu")
    return dev


def _cpu_bf16_fast() -> bool:
    try:  # private: torch has no public bf16 test (torch.backends.cpu.get_cpu_capability stops at AVX512)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CPUs with native bf16 and on CUDA with bf16 support, else fp16 on CUDA, else off."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs CUDA; on CPU use bf16 or auto")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_bf16_fast() else None


def monitor_mode(name: str) -> str:
    return "min" if name.endswith("loss") or name in ("ece", "brier") else "max"


class Trainer:
    """Train ``model`` on ``data`` into ``run_dir`` as configured by ``cfg``, whose ``auto`` values are resolved
    (:func:`medcls.defaults.resolve_auto`, as :func:`medcls.train` does)."""

    def __init__(self, cfg: Config, data: LoadedData, model: Classifier, preprocess: Preprocess, run_dir: Path, *,
                 device: torch.device, dist: DistInfo | None = None, callbacks: Sequence[Callback] = (),
                 inputs=None) -> None:
        if left := unresolved(cfg):
            raise ConfigError(f"the Trainer needs a config with its auto values resolved, got "
                              f"{', '.join(k + '=auto' for k in left)}: pass medcls.defaults.resolve_auto(cfg, data)[0], "
                              "as medcls.train does")
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.dist, self.device, self.callbacks = dist or DistInfo(), device, list(callbacks)
        self.task = data.spec.task
        self.model = self._placed(model)
        self.amp = amp_dtype(cfg.train.amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.train_batches, self.val_batches = self._batches(preprocess, inputs)
        self.augment = build_augment(cfg.transforms.preset, cfg.transforms.strength, cfg.transforms.hflip)
        self.criterion = self._criterion()
        self.optimizer = self._optimizer()
        self.ddp_model = self._ddp_model()
        self.ema = self._ema()
        self.steps_per_epoch, self.total_steps, self.warmup_steps = self._steps()
        self.step, self.start_epoch, self.bad_epochs = 0, 0, 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self._check_monitor()

    # ----------------------------------------------------------------- setup
    def _placed(self, model: Classifier) -> Classifier:
        """``model`` on the device (channels-last if configured), its backbone frozen if configured."""
        model = model.to(self.device)
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.cfg.model.freeze_backbone:
            set_backbone_trainable(model, False)
        return model

    def _batches(self, preprocess: Preprocess, inputs) -> tuple[Batches, Batches]:
        """Train and val batches; their caches draw on one memory budget."""
        d = self.cfg.data
        budget = MemoryBudget(memory_budget(d.cache_memory_gb))

        def batches(table, batch_size: int, where: str) -> Batches:
            return Batches(table, preprocess, batch_size=batch_size, cache=d.cache, num_workers=d.num_workers,
                           inputs=inputs, where=where, budget=budget, cache_dir=d.cache_dir, device=self.device)

        return (batches(self.data.train, self.cfg.train.batch_size, "train split"),
                batches(self.data.val, self.cfg.eval.batch_size, "val split"))

    def _criterion(self) -> torch.nn.Module:
        t, spec = self.cfg.train, self.data.spec
        w = class_weights(self.data.train.labels, spec.num_classes, t.class_weights)
        return build_loss(t.loss, self.task, weights=w, label_smoothing=t.label_smoothing,
                          focal_gamma=t.focal_gamma).to(self.device)

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        if hasattr(self.model, "param_groups"):  # fused model: own groups (text encoder at its own LR)
            groups = self.model.param_groups(t.lr, t.backbone_lr_scale, t.weight_decay, t.text_lr_scale)
        else:
            groups = param_groups(self.model, t.lr, t.backbone_lr_scale, t.weight_decay)
        return build_optimizer(t.optimizer, groups, lr=t.lr, momentum=t.momentum)

    def _ddp_model(self) -> torch.nn.Module:
        """The model wrapped in DistributedDataParallel when training is distributed, else the model."""
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        unused = self.cfg.train.head_only_epochs > 0 or self.cfg.model.freeze_backbone
        return DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)

    def _ema(self):
        """The exponential moving average of the weights (``train.ema``), or None."""
        if not self.cfg.train.ema:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=self.cfg.train.ema_decay, device=self.device)

    def _steps(self) -> tuple[int, int, int]:
        """Optimizer steps per epoch (this rank's shard), in the whole run, and of warmup."""
        t = self.cfg.train
        n_train = len(epoch_order(self.data.train.labels, sampler=t.sampler, seed=self.cfg.seed, epoch=0,
                                  rank=self.dist.rank, world_size=self.dist.world_size))
        per_epoch = max(1, math.ceil(n_train / t.batch_size / t.grad_accum_steps))
        return per_epoch, per_epoch * t.epochs, round(t.warmup_epochs * per_epoch)

    def _check_monitor(self) -> None:
        name = self.cfg.train.monitor
        if name == "loss":
            return
        k = self.data.spec.num_classes
        y = np.arange(4) % 2 if self.task == "binary" else (np.eye(k)[np.arange(2 * k) % k] if self.task == "multilabel" else np.arange(2 * k) % k)
        p = np.full((len(y), k), 1.0 / k)
        keys = [kk for kk, v in self._metrics(y, p).items() if isinstance(v, int | float)]
        if name not in keys:
            from ..errors import did_you_mean

            raise ConfigError(f"train.monitor={name!r} is not a validation metric of a {self.task} task."
                              f"{did_you_mean(name, keys)} Choose from: loss, {', '.join(sorted(keys))}")

    def _metrics(self, y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        spec = self.data.spec
        return compute_metrics(self.task, y, probs, class_names=list(spec.class_names),
                               positive_index=spec.positive_index, threshold=self.cfg.eval.threshold)

    def resume(self, last: Path) -> None:
        tensors, meta = load_checkpoint(last, device="cpu")
        self.model.load_state_dict(split_prefix(tensors, "model/"))
        optimizer_from_flat(self.optimizer, tensors, meta["optimizer"])
        if self.ema is not None:
            self.ema.module.load_state_dict(split_prefix(tensors, "ema/"))
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.step, self.start_epoch = meta["step"], meta["epoch"]  # epochs finished = the next one's index
        self.best_value, self.best_epoch, self.bad_epochs = meta["best_value"], meta["best_epoch"], meta["bad_epochs"]
        self.history = meta["history"]
        log.info("resumed from %s after epoch %d", last, meta["epoch"])

    # ----------------------------------------------------------------- loop
    def _seed_epoch(self, epoch: int) -> torch.Generator:
        torch.manual_seed(self.cfg.seed * 100_003 + epoch * 101 + self.dist.rank)
        g = torch.Generator()
        g.manual_seed(self.cfg.seed * 1_000_003 + epoch * 7919 + self.dist.rank)
        return g

    def _start_epoch(self, epoch: int) -> bool:
        """Train mode, with the backbone frozen (weights and batch-norm statistics) while it must be; returns
        whether this epoch trains the head only."""
        t = self.cfg.train
        head_only = epoch < t.head_only_epochs
        if not self.cfg.model.freeze_backbone and t.head_only_epochs:
            set_backbone_trainable(self.model, not head_only)
        self.ddp_model.train()
        if head_only or self.cfg.model.freeze_backbone:
            freeze_backbone_norms(self.model)
        return head_only

    def _backward(self, x: torch.Tensor, y: torch.Tensor, idx, g: torch.Generator, sync: bool) -> torch.Tensor:
        """Augment and mix one micro-batch, forward it (under AMP) and accumulate its scaled gradient; the loss.
        ``sync``: the last micro-batch of an optimizer step (DDP all-reduces its gradients)."""
        t = self.cfg.train
        side_inputs = self.train_batches.side_inputs_for(idx, self.device)
        x = self.augment(x.to(self.device, non_blocking=True), g)
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(self.device)
        mixed = mix_batch(x, y.float() if self.task == "multilabel" else y, g,
                          mixup=t.mixup, cutmix=t.cutmix, prob=t.mix_prob)
        no_sync = nullcontext() if (sync or not self.dist.enabled) else self.ddp_model.no_sync()
        amp = torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()
        with no_sync:
            with amp:
                logits = self.ddp_model(mixed.x, **side_inputs)
            loss = mixed.loss(self.criterion, logits.float())
            scaled = loss / t.grad_accum_steps
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss

    def _optimizer_step(self) -> None:
        """Learning rate of this step, gradient clipping, the (scaled) optimizer step, EMA."""
        t = self.cfg.train
        set_lr(self.optimizer, lr_factor(t.scheduler, self.step, self.total_steps, self.warmup_steps,
                                         step_every=t.step_size * self.steps_per_epoch, gamma=t.gamma))
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if t.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        t = self.cfg.train
        g = self._seed_epoch(epoch)
        head_only = self._start_epoch(epoch)
        order = epoch_order(self.data.train.labels, sampler=t.sampler, seed=self.cfg.seed, epoch=epoch,
                            rank=self.dist.rank, world_size=self.dist.world_size)
        n_batches = math.ceil(len(order) / t.batch_size)
        total_loss, seen, t0 = 0.0, 0, time.perf_counter()
        bar = self._progress(n_batches, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        batches = Waited(self.train_batches.iterate(order))
        for i, (x, y, idx) in enumerate(batches):
            last_micro = (i + 1) % t.grad_accum_steps == 0 or i + 1 == n_batches
            loss = self._backward(x, y, idx, g, last_micro)
            if last_micro:
                self._optimizer_step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}: "
                                         f"lower train.lr or enable train.clip_grad_norm")
            total_loss += loss.item() * len(x)
            seen += len(x)
            if bar is not None:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        dt = time.perf_counter() - t0
        return {"train_loss": total_loss / max(seen, 1), "train_seconds": dt,
                "train_img_per_s": seen * self.dist.world_size / dt, "data_seconds": batches.seconds,
                "lr": self.optimizer.param_groups[0]["lr"], "head_only": head_only}

    def _progress(self, total: int, epoch: int):
        if not (self.cfg.train.progress and self.dist.is_main):
            return None
        import sys

        from tqdm.auto import tqdm

        if not sys.stderr.isatty():
            return None
        return tqdm(total=total, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", leave=False, unit="batch")

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, Any]:
        logits = predict_logits(self.eval_model(), self.val_batches, self.device, dist=self.dist,
                                channels_last=self.cfg.train.channels_last)
        y = self.val_batches.labels
        lt = torch.from_numpy(logits)
        if self.task == "multilabel":
            loss = F.binary_cross_entropy_with_logits(lt, y.float()).item()
        else:
            loss = F.cross_entropy(lt, y).item()
        m = self._metrics(y.numpy(), probabilities(logits, self.task))
        return {"loss": loss, **{k: v for k, v in m.items() if isinstance(v, int | float)}}

    def _improved(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if monitor_mode(self.cfg.train.monitor) == "min" else value > self.best_value

    def _state_tensors(self, model_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = with_prefix(self.eval_model().state_dict() if model_only else self.model.state_dict(), "model/")
        if model_only:
            return tensors, {}
        opt_t, opt_meta = optimizer_to_flat(self.optimizer)
        tensors.update(opt_t)
        if self.ema is not None:
            tensors.update(with_prefix(self.ema.module.state_dict(), "ema/"))
        return tensors, {"optimizer": opt_meta, "scaler": self.scaler.state_dict() if self.scaler else None}

    def _write_history(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())

    def fit(self) -> dict[str, Any]:
        t = self.cfg.train
        ckpt = self.run_dir / "checkpoints"
        mon = t.monitor
        for epoch in range(self.start_epoch, t.epochs):
            stats = self._train_epoch(epoch)
            val = self.validate()
            value = val.get(mon)
            improved = self._improved(value)
            if improved:
                self.best_value, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
            else:
                self.bad_epochs += 1
            row = {"epoch": epoch + 1, **stats, **{f"val_{k}": v for k, v in val.items()}}
            self.history.append(row)
            if self.dist.enabled:
                check_in_sync(self.model, self.dist)
            stop = t.early_stopping_patience is not None and self.bad_epochs >= t.early_stopping_patience
            if self.dist.is_main:
                meta = {"epoch": epoch + 1, "step": self.step, "best_value": self.best_value,
                        "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "history": self.history,
                        "monitor": mon}
                if improved:
                    bt, _ = self._state_tensors(model_only=True)
                    save_checkpoint(ckpt / "best.safetensors", bt, {"epoch": epoch + 1, "monitor": mon, "value": value,
                                                                    "val": val, "ema": self.ema is not None})
                tensors, extra = self._state_tensors()
                save_checkpoint(ckpt / "last.safetensors", tensors, {**meta, **extra})
                self._write_history()
                eta = (t.epochs - epoch - 1) * stats["train_seconds"]
                log.info("epoch %d/%d  loss %.4f  val_loss %.4f  val_%s %.4f%s  (%.0fs, %.0f img/s, waiting for data "
                         "%.0f%%, ETA %.0fs)", epoch + 1, t.epochs, stats["train_loss"], val["loss"], mon,
                         value if value is not None else float("nan"), "  *" if improved else "", stats["train_seconds"],
                         stats["train_img_per_s"], 100 * stats["data_seconds"] / max(stats["train_seconds"], 1e-9), eta)
            for cb in self.callbacks:
                cb(self, epoch, row)
            if stop:
                log.info("early stopping: val_%s did not improve for %d epochs", mon, self.bad_epochs)
                break
        if self.best_epoch is None and self.dist.is_main:  # monitor was NaN every epoch: keep the last weights
            bt, _ = self._state_tensors(model_only=True)
            save_checkpoint(ckpt / "best.safetensors", bt, {"epoch": len(self.history), "monitor": mon, "value": None,
                                                            "note": f"val_{mon} was undefined; best = last"})
        summary = {"monitor": mon, "best_epoch": self.best_epoch, "best_value": self.best_value,
                   "epochs_run": len(self.history),
                   "train_seconds": float(sum(r["train_seconds"] for r in self.history)),
                   "val": next((r for r in self.history if r["epoch"] == self.best_epoch), self.history[-1] if self.history else {})}
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "metrics.json", {"train": summary})
        return summary
