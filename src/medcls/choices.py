"""The names a config (and a run) may choose from, each list declared once, here.

:mod:`medcls.config` types its fields with these ``Literal`` types; the modules that implement a choice take
their names from the same type (``typing.get_args``), so a name added here is refused by the config until
its implementation exists, and tests/test_choices.py checks that both agree. This module sits below the
config in the layers (it imports only medcls.errors).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from .errors import ConfigError, did_you_mean

Task = Literal["binary", "multiclass", "multilabel"]
Split = Literal["train", "val", "test"]
Checkpoint = Literal["best", "last"]

CacheMode = Literal["auto", "memory", "disk", "off", "on"]  # on = memory
Preset = Literal["auto", "xray", "histology", "generic"]  # augmentation and TTA; auto: by modality (defaults)
StainMethod = Literal["none", "macenko", "reinhard"]

Stem = Literal["auto", "default", "small", "tiny"]  # auto: by input size (artefact.resolve_stem)
Fusion = Literal["none", "meta_only", "concat", "cross_attention", "gated"]  # image only, metadata only, fused

Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["cosine", "onecycle", "step", "none"]
Loss = Literal["auto", "ce", "focal", "bce"]  # auto: bce for multilabel tasks, else ce
Sampler = Literal["random", "balanced"]

OperatingPoint = Literal["default", "youden", "max_f1", "target_sensitivity", "target_specificity"]


def check_choice(value: str, choice: Any, key: str) -> str:
    """``value`` if it is one of the names of the ``Literal`` type ``choice``, else one ConfigError line naming
    ``key`` (for callers that bypass the config, such as the Python API)."""
    names = get_args(choice)
    if value not in names:
        raise ConfigError(f"{key} must be one of {', '.join(names)}, got {value!r}.{did_you_mean(str(value), names)}")
    return value
