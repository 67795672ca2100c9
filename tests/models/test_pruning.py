"""torch-pruning wrapper: the stored history rebuilds the pruned architecture exactly; ratios are checked."""

from __future__ import annotations

import json

import pytest
import torch

from medcls.errors import ConfigError, ModelError
from medcls.models import create_model
from medcls.models.pruning import check_ratio, count_parameters, prune_channels, replay_pruning


def test_history_replay_rebuilds_the_pruned_model():
    pytest.importorskip("torch_pruning")  # the 'prune' extra
    torch.manual_seed(0)
    model = create_model("resnet18", 3, in_chans=1, stem="small").eval()
    before = count_parameters(model)
    history = json.loads(json.dumps(prune_channels(model, 0.5, in_chans=1, size=28)))  # as stored in JSON
    assert count_parameters(model) < 0.3 * before
    assert model.net.get_classifier().out_features == 3  # the head keeps its classes
    assert model.net.conv1.out_channels == 32  # 64 channels halved, a multiple of 8
    rebuilt = replay_pruning(create_model("resnet18", 3, in_chans=1, stem="small"), history, in_chans=1, size=28)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


def test_history_of_another_architecture_is_refused():
    pytest.importorskip("torch_pruning")  # the 'prune' extra
    model = create_model("resnet18", 2, in_chans=1, stem="small")
    with pytest.raises(ModelError, match="does not fit"):
        replay_pruning(model, [["net.no_such_layer", True, [0, 1]]], in_chans=1, size=28)


@pytest.mark.parametrize("ratio", [0, 0.951, 1, -0.1, "half", None])
def test_ratio_outside_range_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"\(0, 0.95\]"):
        check_ratio(ratio)
    assert check_ratio(0.95) == 0.95 and check_ratio("0.3") == 0.3
