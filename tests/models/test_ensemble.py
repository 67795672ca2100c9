"""``Ensemble``: the weighted mean of calibrated member probabilities, returned as logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcls.errors import ModelError
from medcls.models.ensemble import Ensemble


class Fixed(nn.Module):
    """A member that answers the same logits for every image."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("z", torch.tensor([logits]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z.expand(len(x), -1)


def test_softmax_of_the_output_is_the_weighted_mean_of_tempered_probabilities():
    a, b = Fixed([2.0, 0.0, -1.0]), Fixed([0.0, 1.0, 3.0])
    ens = Ensemble([a, b], "multiclass", temperatures=[2.0, 0.5], weights=[3, 1])
    x = torch.zeros(4, 1, 8, 8)
    want = 0.75 * torch.softmax(a(x) / 2.0, 1) + 0.25 * torch.softmax(b(x) / 0.5, 1)
    assert torch.allclose(torch.softmax(ens(x), 1), want, atol=1e-6)


def test_multilabel_members_are_averaged_per_label_with_sigmoids():
    a, b = Fixed([4.0, -4.0]), Fixed([-4.0, -4.0])
    ens = Ensemble([a, b], "multilabel")
    p = torch.sigmoid(ens(torch.zeros(2, 1, 4, 4)))
    want = 0.5 * torch.sigmoid(torch.tensor([4.0, -4.0])) + 0.5 * torch.sigmoid(torch.tensor([-4.0, -4.0]))
    assert torch.allclose(p, want.expand(2, -1), atol=1e-6)


def test_confident_members_give_finite_logits():
    ens = Ensemble([Fixed([200.0, -200.0]), Fixed([300.0, -300.0])], "binary")
    assert torch.isfinite(ens(torch.zeros(1, 1, 4, 4))).all()


def test_temperatures_and_weights_travel_in_the_state_dict():
    ens = Ensemble([Fixed([1.0, 0.0]), Fixed([0.0, 1.0])], "binary", temperatures=[0.7, 1.3], weights=[1, 3])
    fresh = Ensemble([Fixed([1.0, 0.0]), Fixed([0.0, 1.0])], "binary")
    fresh.load_state_dict(ens.state_dict())
    assert fresh.temperatures.tolist() == pytest.approx([0.7, 1.3]) and fresh.weights.tolist() == [0.25, 0.75]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"members": 1}, "at least 2 members"),
    ({"temperatures": [1.0]}, "needs 2 temperatures and 2 weights"),
    ({"temperatures": [1.0, 0.0]}, "temperatures must be > 0"),
    ({"weights": [0, 0]}, "not all 0"),
])
def test_bad_ensembles_are_refused(kwargs, match):
    members = [Fixed([0.0, 1.0])] * kwargs.pop("members", 2)
    with pytest.raises(ModelError, match=match):
        Ensemble(members, "binary", **kwargs)
