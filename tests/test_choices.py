"""Each choice list is declared once (medcls.choices): the config accepts exactly the names the implementation
implements, every one of them works, and a name outside the list is refused by both."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from medcls import choices
from medcls.config import Config, build_config
from medcls.errors import ConfigError, ModelError

CONFIG_CHOICES = {
    "data.cache": choices.CacheMode, "transforms.preset": choices.Preset, "transforms.stain": choices.StainMethod,
    "model.stem": choices.Stem, "model.fusion": choices.Fusion, "train.optimizer": choices.Optimizer,
    "train.scheduler": choices.Scheduler, "train.loss": choices.Loss, "train.sampler": choices.Sampler,
    "eval.split": choices.Split, "eval.checkpoint": choices.Checkpoint, "eval.operating_point": choices.OperatingPoint,
}
NEEDS = {"model.fusion": ["inputs.numeric=[age]"]}  # what a fused model needs besides its fusion


@pytest.mark.parametrize("key", CONFIG_CHOICES)
def test_the_config_accepts_exactly_the_declared_names(key):
    section, name = key.split(".")
    assert Config.model_fields[section].annotation.model_fields[name].annotation == CONFIG_CHOICES[key]
    for value in get_args(CONFIG_CHOICES[key]):
        cfg = build_config(overrides=[f"{key}={value}", *NEEDS.get(key, [])])
        assert getattr(getattr(cfg, section), name) == value
    with pytest.raises(ConfigError, match=key):
        build_config(overrides=[f"{key}=bogus"])


def test_tasks():
    from medcls.data.spec import DatasetSpec
    from medcls.metrics import TASKS, compute_metrics

    assert get_args(choices.Task) == TASKS
    y, p = np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    for task in TASKS:
        DatasetSpec("d", task, ("a", "b"), 1)
        labels = np.eye(2)[y] if task == "multilabel" else y
        assert compute_metrics(task, labels, p, class_names=["a", "b"])["auc"] == 1.0
    with pytest.raises(Exception, match="task must be"):
        DatasetSpec("d", "regression", ("a", "b"), 1)


def test_splits_and_checkpoints():
    from medcls.artefact import CHECKPOINTS
    from medcls.data.sources import SPLITS, LoadedData
    from medcls.data.splits import SPLITS as FILE_SPLITS
    from medcls.data.table import ArrayTable

    assert SPLITS == FILE_SPLITS == get_args(choices.Split) and get_args(choices.Checkpoint) == CHECKPOINTS
    tables = [ArrayTable(np.zeros((2, 4, 4), np.uint8), np.array([0, 1])) for _ in SPLITS]
    data = LoadedData(None, *tables, [])
    assert [data.split(s) for s in SPLITS] == tables


def test_cache_modes(tmp_path):
    from medcls.data.table import ArrayTable
    from medcls.engine.cache import DiskCache, MemoryBudget, MemoryCache, build_cache
    from medcls.transforms import Preprocess, PreprocessConfig

    table = ArrayTable(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1]))
    pre = Preprocess(PreprocessConfig(size=8, in_chans=1))
    kinds = {"off": type(None), "memory": MemoryCache, "on": MemoryCache, "disk": DiskCache, "auto": MemoryCache}
    assert set(kinds) == set(get_args(choices.CacheMode))
    for mode, kind in kinds.items():
        cache = build_cache(table, pre, mode=mode, budget=MemoryBudget(1 << 20), folder=tmp_path, workers=0, what=mode)
        assert type(cache) is kind
    with pytest.raises(ConfigError, match="data.cache must be one of auto, memory"):
        build_cache(table, pre, mode="ram", budget=MemoryBudget(1 << 20), folder=tmp_path, workers=0, what="x")


def test_presets_augment_and_tta():
    from medcls.defaults import auto_preset
    from medcls.transforms import build_augment
    from medcls.transforms.augment import PRESETS
    from medcls.transforms.tta import tta_views

    assert set(PRESETS) | {"auto"} == set(get_args(choices.Preset))
    x, g = torch.rand(2, 3, 8, 8), torch.Generator().manual_seed(0)
    for preset in PRESETS:
        assert build_augment(preset)(x, g).shape == x.shape
        assert all(view(x).shape == x.shape for view in tta_views(preset))
    assert {auto_preset(name, c) for name in ("pathmnist", "dermamnist", "chestmnist", "other") for c in (1, 3)} \
        <= set(PRESETS)


def test_stain_methods():
    from medcls.transforms import StainNormalizer, fit_stain
    from medcls.transforms.stain import FITTED, METHODS

    assert get_args(choices.StainMethod) == METHODS and set(FITTED) == set(METHODS) - {"none"}
    rng = np.random.default_rng(0)
    od = rng.random((64, 64, 1)) * [0.65, 0.70, 0.29] + rng.random((64, 64, 1)) * [0.07, 0.99, 0.11]
    patch = np.clip(250 * np.exp(-od), 0, 255).astype(np.uint8)  # haematoxylin and eosin everywhere
    for method in FITTED:
        assert StainNormalizer(method, fit_stain(patch, method))(patch).shape == patch.shape
    with pytest.raises(ConfigError, match="macenko or reinhard"):
        fit_stain(patch, "vahadane")


def test_stems():
    from medcls.models import STEMS, create_model

    assert set(STEMS) | {"auto"} == set(get_args(choices.Stem))
    convs = {s: create_model("resnet18", 2, stem=s).net.conv1.kernel_size for s in STEMS}
    assert convs == {"default": (7, 7), "small": (3, 3), "tiny": (3, 3)}
    with pytest.raises(ModelError, match="stem must be one of default, small, tiny"):
        create_model("resnet18", 2, stem="huge")


def test_fusions():
    from medcls.experiments.ablate import VARIANTS
    from medcls.models import create_model
    from medcls.multimodal import FUSIONS, FusionClassifier

    assert set(FUSIONS) | {"none"} == set(get_args(choices.Fusion)) == set(VARIANTS)
    x, num = torch.rand(2, 3, 32, 32), torch.rand(2, 2)
    for fusion in FUSIONS:
        model = FusionClassifier(create_model("resnet18", 2), 2, fusion=fusion, n_numeric=2).eval()
        assert model(x, numeric=num, numeric_missing=torch.zeros(2, 2)).shape == (2, 2)
    with pytest.raises(ConfigError, match="model.fusion must be one of none"):
        FusionClassifier(create_model("resnet18", 2), 2, fusion="sum", n_numeric=2)


def test_optimizers_and_schedulers():
    from medcls.engine.schedule import build_optimizer, lr_factor

    kinds = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    assert set(kinds) == set(get_args(choices.Optimizer))
    for name, kind in kinds.items():
        assert type(build_optimizer(name, [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}],
                                    lr=0.1, momentum=0.9)) is kind
    curves = {k: tuple(lr_factor(k, s, 100, 10, step_every=30) for s in (0, 5, 50, 99))
              for k in get_args(choices.Scheduler)}
    assert len(set(curves.values())) == len(curves)  # each schedule its own
    with pytest.raises(ConfigError, match="train.optimizer must be one of adamw, sgd, got 'adam'"):
        build_optimizer("adam", [], lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match="train.scheduler must be one of"):
        lr_factor("linear", 0, 10, 0)


def test_losses():
    from medcls.engine.losses import FocalLoss, build_loss

    def build(kind, task):
        return build_loss(kind, task, weights=None, label_smoothing=0.0, focal_gamma=2.0)

    kinds = {"ce": torch.nn.CrossEntropyLoss, "focal": FocalLoss, "bce": torch.nn.BCEWithLogitsLoss}
    assert set(kinds) | {"auto"} == set(get_args(choices.Loss))
    for kind, cls in kinds.items():
        assert type(build(kind, "multilabel" if kind == "bce" else "multiclass")) is cls
    assert type(build("auto", "binary")) is torch.nn.CrossEntropyLoss
    assert type(build("auto", "multilabel")) is torch.nn.BCEWithLogitsLoss
    with pytest.raises(ConfigError, match="train.loss must be one of auto, ce, focal, bce, got 'mse'"):
        build("mse", "binary")


def test_samplers():
    from medcls.engine.loader import epoch_order

    labels = np.array([0] * 9 + [1])
    orders = {s: epoch_order(labels, sampler=s, seed=0, epoch=0) for s in get_args(choices.Sampler)}
    assert sorted(orders["random"]) == list(range(10))  # a permutation
    assert (orders["balanced"] == 9).sum() > 1  # the rare class drawn with replacement
    with pytest.raises(ConfigError, match="train.sampler must be one of random, balanced"):
        epoch_order(labels, sampler="weighted", seed=0, epoch=0)


def test_operating_points():
    from medcls.metrics import choose_thresholds
    from medcls.metrics.operating_points import RULES

    assert get_args(choices.OperatingPoint) == RULES
    chosen = choose_thresholds([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert [k for k, v in chosen.items() if isinstance(v, dict) and "threshold" in v] == list(RULES)
