"""Dataset-aware defaults: the ``auto`` values of a config, made concrete once the data is loaded.

A user who runs ``medcls train --set data.source=medmnist:dermamnist`` with no
recipe gets choices that hold up across datasets rather than ones tuned to one:

- ``train.epochs: auto`` trains on a fixed number of images,
  ``round(EPOCH_IMAGE_BUDGET / n_train)`` epochs clamped to
  [``MIN_EPOCHS``, ``MAX_EPOCHS``]: 10 epochs of PneumoniaMNIST (4,708 train
  images: ResNet-18 at 28 px trains in ~2 minutes on 2 AVX-512 BF16 cores, ~8 without bf16), 88 of
  BreastMNIST (546), 3 of PathMNIST (89,996). Small datasets get the optimizer
  steps they need; large ones stay within a working session.
- ``train.class_weights: auto`` is ``balanced`` for binary tasks, so ACC at
  0.5 survives a prevalence shift between train and test (PneumoniaMNIST: train
  74% pneumonia, test 62.5%; ACC .882 -> .910 on 3 seeds), and ``none`` for
  multiclass (argmax accuracy on a skewed test set rewards the prior) and
  multilabel (BCE ``pos_weight`` of a 0.2%-prevalence label would be ~500).
- ``train.ema: auto`` evaluates and checkpoints an exponential moving average
  of the weights when the run has enough optimizer steps for ``ema_decay``
  to forget the initial weights (at most ``EMA_MAX_INIT_WEIGHT`` = 5% of them
  left in the average: 298 steps at the default decay of 0.99).
  On PneumoniaMNIST (370 steps) EMA is worth AUC +.006 and ACC +.10 on 3 seeds
  (benchmarks/RESULTS.md §9); a shorter run would validate an average still
  dominated by its random initialisation, so it trains without.
- ``transforms.preset: auto`` picks a label-safe augmentation per modality:
  ``histology`` (all 8 dihedral views, colour jitter) for microscopy, where
  orientation carries no meaning; ``generic`` (horizontal flips) for
  dermatoscopy, fundus and ultrasound; ``xray`` (no flips) for radiographs and
  CT, where left and right can be the label (OrganMNIST has kidney-left /
  kidney-right). Other sources: ``xray`` for one channel, ``generic`` for RGB.

The run's ``config.yaml`` stores the resolved values, so resume, evaluation,
TTA and export see exactly what training used.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .config import Config

log = logging.getLogger("medcls")

EPOCH_IMAGE_BUDGET = 48_000
MIN_EPOCHS, MAX_EPOCHS = 3, 100
EMA_MAX_INIT_WEIGHT = 0.05  # share of the initial weights left in the average at the end
AUTO_KEYS = ("train.epochs", "train.ema", "train.class_weights", "transforms.preset")  # what resolve_auto fills

_MEDMNIST_PRESET = {
    "pathmnist": "histology", "bloodmnist": "histology", "tissuemnist": "histology",
    "dermamnist": "generic", "retinamnist": "generic", "breastmnist": "generic",
    "chestmnist": "xray", "pneumoniamnist": "xray", "octmnist": "xray",
    "organamnist": "xray", "organcmnist": "xray", "organsmnist": "xray",
}


def auto_epochs(n_train: int) -> int:
    """Epochs that show the model about ``EPOCH_IMAGE_BUDGET`` training images, clamped."""
    if n_train < 1:
        return MIN_EPOCHS
    return max(MIN_EPOCHS, min(MAX_EPOCHS, round(EPOCH_IMAGE_BUDGET / n_train)))


def auto_ema(epochs: int, n_train: int, batch_size: int, grad_accum_steps: int, ema_decay: float) -> bool:
    """EMA on when the run's optimizer steps leave at most ``EMA_MAX_INIT_WEIGHT`` of the initial weights
    in the average (decay 0.99: 298 steps or more)."""
    steps = epochs * max(1, math.ceil(n_train / batch_size / grad_accum_steps))
    return ema_decay**steps <= EMA_MAX_INIT_WEIGHT


def auto_class_weights(task: str) -> str:
    return "balanced" if task == "binary" else "none"


def auto_preset(dataset: str, channels: int) -> str:
    """The augmentation preset of a MedMNIST flag (any size suffix), else by channel count."""
    flag = dataset.split("_")[0].lower()
    if flag in _MEDMNIST_PRESET:
        return _MEDMNIST_PRESET[flag]
    return "xray" if channels == 1 else "generic"


def resolve_auto(cfg: Config, data: Any) -> tuple[Config, dict[str, Any]]:
    """``cfg`` with every ``auto`` replaced by its value for ``data`` (a LoadedData), and what was chosen."""
    spec = data.spec
    chosen: dict[str, Any] = {}
    train, transforms = {}, {}
    if cfg.train.epochs == "auto":
        train["epochs"] = chosen["train.epochs"] = auto_epochs(len(data.train))
    if cfg.train.ema == "auto":
        epochs = train.get("epochs", cfg.train.epochs)
        train["ema"] = chosen["train.ema"] = auto_ema(epochs, len(data.train), cfg.train.batch_size,
                                                      cfg.train.grad_accum_steps, cfg.train.ema_decay)
    if cfg.train.class_weights == "auto":
        train["class_weights"] = chosen["train.class_weights"] = auto_class_weights(spec.task)
    if cfg.transforms.preset == "auto":
        transforms["preset"] = chosen["transforms.preset"] = auto_preset(spec.name, spec.channels)
    if not chosen:
        return cfg, chosen
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train),
                                 "transforms": cfg.transforms.model_copy(update=transforms)})
    log.info("auto settings for %s (%d train images, %s): %s", spec.name, len(data.train), spec.task,
             ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return cfg, chosen


def unresolved(cfg: Config) -> list[str]:
    """The keys of ``AUTO_KEYS`` that ``cfg`` still holds as ``auto`` (none once :func:`resolve_auto` ran)."""
    return [key for key in AUTO_KEYS if getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) == "auto"]
