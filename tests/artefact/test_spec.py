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
])
def test_bad_documents_say_what_is_wrong(edit, match):
    d = SPEC.to_dict()
    edit(d)
    with pytest.raises((RunError, ModelError), match=match):
        ModelSpec.from_dict(d, "model.json")


def test_auto_stem():
    assert resolve_stem("resnet18", 28, "auto") == "small"
    assert resolve_stem("resnet18", 224, "auto") == "default"
    assert resolve_stem("efficientnet_b0", 28, "auto") == "default"  # not ResNet-style: keeps its own stem
    assert resolve_stem("resnet18", 28, "tiny") == "tiny"
