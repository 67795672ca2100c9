"""Losses: focal loss against cross-entropy, class weights (balanced, a list, errors), the loss a config builds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medcls.engine.losses import FocalLoss, build_loss, class_weights
from medcls.errors import ConfigError


def _logits_and_targets(k: int, n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, k, generator=g), torch.arange(n) % k


@pytest.mark.parametrize("k", [2, 5], ids=["binary", "multiclass"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_with_gamma_0_is_cross_entropy(k, smoothing):
    logits, y = _logits_and_targets(k)
    focal = FocalLoss(gamma=0.0, label_smoothing=smoothing)(logits, y)
    assert focal.item() == pytest.approx(nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("k", [2, 5], ids=["binary", "multiclass"])
def test_focal_with_gamma_0_and_class_weights_is_weighted_cross_entropy_per_sample(k):
    logits, y = _logits_and_targets(k)
    w = torch.linspace(0.5, 2.0, k)
    focal = FocalLoss(gamma=0.0, weight=w)(logits, y)
    # each sample's loss is w[y] x its cross-entropy; averaged over the samples (RetinaNet's focal loss), where
    # torch's weighted 'mean' divides by the sum of the weights instead
    per_sample = nn.CrossEntropyLoss(weight=w, reduction="none")(logits, y)
    assert focal.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert focal.item() != pytest.approx(nn.CrossEntropyLoss()(logits, y).item(), rel=1e-3)  # the weights count


def test_focal_known_value_scales_cross_entropy_by_one_minus_pt_to_the_gamma():
    logits = torch.tensor([[math.log(9.0), 0.0]])  # p(class 0) = 0.9
    y = torch.tensor([0])
    ce = -math.log(0.9)
    assert FocalLoss(gamma=2.0)(logits, y).item() == pytest.approx(0.1**2 * ce, rel=1e-6)
    assert FocalLoss(gamma=1.0)(logits, y).item() == pytest.approx(0.1 * ce, rel=1e-6)


def test_focal_down_weights_easy_examples_relative_to_hard_ones():
    easy = (torch.tensor([[3.0, -3.0]]), torch.tensor([0]))  # confidently right
    hard = (torch.tensor([[-1.0, 1.0]]), torch.tensor([0]))  # wrong
    ce, focal = nn.CrossEntropyLoss(), FocalLoss(gamma=2.0)
    ratio_ce = ce(*easy) / ce(*hard)
    ratio_focal = focal(*easy) / focal(*hard)
    assert ratio_focal < ratio_ce / 10  # plain CE keeps the easy example's share; focal all but removes it
    assert focal(*easy) < ce(*easy) and focal(*hard) < ce(*hard)


def test_focal_is_not_built_for_multilabel_tasks():
    with pytest.raises(ConfigError, match="multilabel tasks need train.loss=bce"):
        build_loss("focal", "multilabel", weights=None, label_smoothing=0.0, focal_gamma=2.0)


def test_class_weights_balanced_as_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(labels, 3, "balanced")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    assert w.dtype == torch.float32
    assert w[labels].sum().item() == pytest.approx(len(labels))  # every class gets the same total weight


def test_class_weights_balanced_with_an_absent_class_stays_finite():
    w = class_weights(np.array([0, 0, 1]), 3, "balanced")
    assert torch.isfinite(w).all()
    np.testing.assert_allclose(w.numpy(), [3 / (3 * 2), 3 / 3, 3 / 3], rtol=1e-6)


def test_class_weights_multilabel_are_negatives_over_positives_per_label():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    w = class_weights(labels, 3, "balanced")
    np.testing.assert_allclose(w.numpy(), [1 / 3, 3 / 1, 4 / 1], rtol=1e-6)  # a label never positive: n / 1


def test_class_weights_list_none_and_wrong_length():
    labels = np.array([0, 1, 1])
    assert class_weights(labels, 2, "none") is None
    assert torch.equal(class_weights(labels, 2, [1.0, 2.5]), torch.tensor([1.0, 2.5]))
    with pytest.raises(ConfigError, match="train.class_weights has 3 values for 2 classes"):
        class_weights(labels, 2, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_build_loss_auto_and_ce_are_cross_entropy_with_weights_and_smoothing(task):
    k = 2 if task == "binary" else 4
    logits, y = _logits_and_targets(k)
    w = torch.linspace(1.0, 2.0, k)
    ref = nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(logits, y)
    for kind in ("auto", "ce"):
        loss = build_loss(kind, task, weights=w, label_smoothing=0.1, focal_gamma=2.0)
        assert loss(logits, y).item() == pytest.approx(ref.item(), rel=1e-6), kind


def test_build_loss_focal_uses_the_configured_gamma():
    logits, y = _logits_and_targets(3)
    kw = {"weights": None, "label_smoothing": 0.0}
    plain = build_loss("ce", "multiclass", focal_gamma=2.0, **kw)(logits, y)
    assert build_loss("focal", "multiclass", focal_gamma=0.0, **kw)(logits, y).item() == pytest.approx(plain.item())
    assert build_loss("focal", "multiclass", focal_gamma=2.0, **kw)(logits, y) < plain


def test_build_loss_multilabel_is_bce_with_pos_weight():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(6, 3, generator=g), (torch.rand(6, 3, generator=g) > 0.5).float()
    pw = torch.tensor([1.0, 2.0, 0.5])
    ref = nn.BCEWithLogitsLoss(pos_weight=pw)(logits, target)
    for kind in ("auto", "bce"):
        loss = build_loss(kind, "multilabel", weights=pw, label_smoothing=0.1, focal_gamma=2.0)
        assert loss(logits, target).item() == pytest.approx(ref.item(), rel=1e-6), kind


def test_build_loss_refuses_a_loss_of_the_other_kind_of_task():
    with pytest.raises(ConfigError, match="multilabel tasks need train.loss=bce"):
        build_loss("ce", "multilabel", weights=None, label_smoothing=0.0, focal_gamma=2.0)
    with pytest.raises(ConfigError, match="train.loss=bce is for multilabel tasks; this task is binary"):
        build_loss("bce", "binary", weights=None, label_smoothing=0.0, focal_gamma=2.0)
