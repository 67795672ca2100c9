"""Epoch time of the medcls trainer vs a plain PyTorch reference loop, measured in one run.

Reference: per-sample PIL + torchvision transforms in a DataLoader (``--workers``
processes), the same architecture from medcls's ``ModelSpec.build`` (fp32, no
channels_last, no autocast), AdamW, cross-entropy, forward/loss/backward/step.
medcls: a :class:`~medcls.engine.trainer.Trainer` built as ``medcls.api.train``
builds it, timing ``trainer._train_epoch``. Both see the first ``--images``
training images. Reports data-only and training throughput and the epoch-time
ratio medcls/reference (median over ``--repeats`` alternating runs).

    python benchmarks/speed.py --config configs/pneumoniamnist.yaml --repeats 3 --json speed.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_name
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from medcls import load_config
from medcls.artefact import ModelSpec
from medcls.data.sources import load_data
from medcls.data.table import ImageTable
from medcls.defaults import resolve_auto
from medcls.engine.loader import Batches, epoch_order
from medcls.engine.trainer import Trainer
from medcls.transforms import Preprocess, build_augment

WARMUP_BATCHES = 3


class PILDataset(Dataset):
    """(transformed tensor, label) per image, decoded through PIL like a typical torchvision pipeline."""

    def __init__(self, table: ImageTable, transform: T.Compose, mode: str) -> None:
        self.table, self.transform, self.mode = table, transform, mode
        self.labels = torch.as_tensor(np.asarray(table.labels))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.fromarray(np.asarray(self.table.load(i))).convert(self.mode)
        return self.transform(img), self.labels[i]


def reference_loader(table: ImageTable, size: int, in_chans: int, mean: list[float], std: list[float],
                     batch_size: int, workers: int) -> DataLoader:
    steps: list[Any] = [] if np.asarray(table.load(0)).shape[:2] == (size, size) else [T.Resize((size, size))]
    steps += [T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
              T.ColorJitter(brightness=0.1, contrast=0.1), T.ToTensor(), T.Normalize(mean, std)]
    ds = PILDataset(table, T.Compose(steps), "L" if in_chans == 1 else "RGB")
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def ref_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, crit: torch.nn.Module, loader: DataLoader,
              limit: int | None = None) -> float:
    model.train()
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
    return time.perf_counter() - t0


def ref_data_epoch(loader: DataLoader) -> float:
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def medcls_warmup(trainer: Trainer) -> None:
    """A few optimiser steps through the trainer's own model/criterion/augment (not timed)."""
    g = torch.Generator().manual_seed(0)
    trainer.ddp_model.train()
    amp = trainer.amp
    for i, (x, y, _) in enumerate(trainer.train_batches.iterate()):
        if i >= WARMUP_BATCHES:
            break
        x = trainer.augment(x, g)
        if trainer.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            logits = trainer.ddp_model(x)
        trainer.criterion(logits.float(), y).backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)


def medcls_data_epoch(batches: Batches, cfg: Any, epoch: int) -> float:
    augment = build_augment(cfg.transforms.preset, cfg.transforms.strength)
    g = torch.Generator().manual_seed(epoch)
    order = epoch_order(batches.labels.numpy(), sampler=cfg.train.sampler, seed=cfg.seed, epoch=epoch)
    t0 = time.perf_counter()
    for x, _, _ in batches.iterate(order):
        augment(x, g)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pneumoniamnist.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VAL", help="config override (repeatable)")
    ap.add_argument("--images", type=int, default=None, help="first N training images (default: all)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    cfg = load_config(args.config, args.set)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = load_data(cfg.data)
    n = min(args.images or len(data.train), len(data.train))
    data.train = data.train.subset(range(n))
    cfg = resolve_auto(cfg, data)[0]
    spec = ModelSpec.for_config(cfg, data.spec)
    pre = spec.preprocess
    bs = cfg.train.batch_size
    cpu = torch.device("cpu")

    # medcls: exactly as medcls.api.train builds it (the Trainer builds the train/val caches).
    torch.manual_seed(cfg.seed)
    model, stem = spec.build(), spec.stem
    tmp = tempfile.TemporaryDirectory(prefix="medcls-speed-")
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data, model, Preprocess(pre), run_dir=Path(tmp.name), device=cpu)
    trainer_setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data_batches = Batches(data.train, Preprocess(pre), batch_size=bs, cache=cfg.data.cache)
    cache_build_s = time.perf_counter() - t0

    # Reference: same architecture, fresh weights, fp32, contiguous; normalisation done by the transforms,
    # so the loop calls the Classifier's inner network (the Classifier would normalise a second time).
    torch.manual_seed(cfg.seed)
    ref_cls = spec.build()
    mean, std = ref_cls.mean.flatten().tolist(), ref_cls.std.flatten().tolist()
    ref_model = ref_cls.net
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ref_crit = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    loader = reference_loader(data.train, pre.size, pre.in_chans, mean, std, bs, args.workers)

    # Warm-up (also starts the persistent reference workers).
    ref_epoch(ref_model, ref_opt, ref_crit, loader, limit=WARMUP_BATCHES)
    medcls_warmup(trainer)

    res: dict[str, list[float]] = {k: [] for k in ("ref_data", "med_data", "ref_train", "med_train")}
    for r in range(args.repeats):
        res["ref_data"].append(ref_data_epoch(loader))
        res["med_data"].append(medcls_data_epoch(data_batches, cfg, r))
        res["ref_train"].append(ref_epoch(ref_model, ref_opt, ref_crit, loader))
        res["med_train"].append(trainer._train_epoch(r)["train_seconds"])
    del loader
    med = {k: statistics.median(v) for k, v in res.items()}
    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tmp.cleanup()

    out: dict[str, Any] = {
        "config": args.config, "overrides": args.set, "images": n, "batch_size": bs, "batches": math.ceil(n / bs),
        "repeats": args.repeats, "reference_workers": args.workers, "model": cfg.model.name, "stem": stem,
        "input": [pre.in_chans, pre.size, pre.size], "channels_last": cfg.train.channels_last,
        "bf16_autocast": trainer.amp == torch.bfloat16, "amp_dtype": str(trainer.amp),
        "seconds": res, "median_seconds": med,
        "data_img_per_s": {"reference": n / med["ref_data"], "medcls": n / med["med_data"]},
        "train_img_per_s": {"reference": n / med["ref_train"], "medcls": n / med["med_train"]},
        "epoch_seconds": {"reference": med["ref_train"], "medcls": med["med_train"]},
        "ratio_medcls_over_reference": med["med_train"] / med["ref_train"],
        "medcls_cache_build_seconds": cache_build_s, "medcls_trainer_setup_seconds": trainer_setup_s,
        "peak_rss_mb": ru_self, "peak_rss_children_mb": ru_kids, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "cpu": cpu_name(), "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    print(f"## medcls vs reference: {cfg.model.name} ({stem} stem), {n} images, batch {bs}, "
          f"median of {args.repeats}\n")
    print("| | reference | medcls |\n|---|---:|---:|")
    print(f"| data only (img/s) | {out['data_img_per_s']['reference']:.0f} | {out['data_img_per_s']['medcls']:.0f} |")
    print(f"| training (img/s) | {out['train_img_per_s']['reference']:.0f} | {out['train_img_per_s']['medcls']:.0f} |")
    print(f"| epoch (s) | {med['ref_train']:.2f} | {med['med_train']:.2f} |")
    print(f"| setup (s) | workers start in warm-up | cache {cache_build_s:.2f} (trainer incl. val {trainer_setup_s:.2f}) |")
    print(f"\nratio medcls/reference epoch time: **{out['ratio_medcls_over_reference']:.2f}**  ")
    kids = f"; largest child {ru_kids:.0f} MB incl. pages shared by fork" if args.workers else ""
    print(f"peak RSS {ru_self:.0f} MB (both pipelines, one process{kids}), "
          f"torch threads {out['torch_threads']}, reference workers {args.workers}, "
          f"bf16 autocast {'on' if out['bf16_autocast'] else 'off'}, channels_last {cfg.train.channels_last}  ")
    print(f"CPU {out['cpu']}, torch {torch.__version__}, {out['date']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
