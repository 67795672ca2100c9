"""ModelSpec: the one description that rebuilds a model; round trip and clear errors on bad documents."""

from __future__ import annotations

import pytest
import torch

from medcls.artefact import ModelSpec, resolve_stem
from medcls.data.spec import DatasetSpec
from medcls.errors import ModelError, RunError
from medcls.transforms import PreprocessConfig

SPEC = ModelSpec("resnet18", DatasetSpec("x", "binary", ("a", "b"), 1), PreprocessConfig(size=28, in_chans=1),
                 stem="small", preset="xray")


def test_round_trip_and_build():
    again = ModelSpec.from_dict(SPEC.to_dict())
    assert again == SPEC
    model = again.build().eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("architecture"), "incomplete or malformed"),
    (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
    (lambda d: d.update(num_classes=3), "num_classes is 3 but"),
    (lambda d: d.update(stem="huge"), "stem must be one of"),
    (lambda d: d.update(pruning={"ratio": 0.5}), "pruning history"),
    (lambda d: d.update(pruning=[1, 2]), "pruning history"),
])
def test_bad_documents_say_what_is_wrong(edit, match):
    d = SPEC.to_dict()
    edit(d)
    with pytest.raises((RunError, ModelError), match=match):
        ModelSpec.from_dict(d, "model.json")


def test_pruned_spec_round_trips_and_builds_the_pruned_shapes():
    pytest.importorskip("torch_pruning")  # the 'prune' extra
    from medcls.models.pruning import count_parameters, prune_channels

    model = SPEC.build()
    history = prune_channels(model, 0.3, in_chans=1, size=28)
    pruned = SPEC.with_(pruning={"ratio": 0.3, "history": history})
    assert "pruning" not in SPEC.to_dict() and ModelSpec.from_dict(pruned.to_dict()) == pruned
    rebuilt = ModelSpec.from_dict(pruned.to_dict()).build()
    assert count_parameters(rebuilt) == count_parameters(model) < count_parameters(SPEC.build())
    rebuilt.load_state_dict(model.state_dict())  # the pruned weights fit the rebuilt shapes


def test_auto_stem():
    assert resolve_stem("resnet18", 28, "auto") == "small"
    assert resolve_stem("resnet18", 224, "auto") == "default"
    assert resolve_stem("efficientnet_b0", 28, "auto") == "default"  # not ResNet-style: keeps its own stem
    assert resolve_stem("resnet18", 28, "tiny") == "tiny"
