"""Multimodal classification: the image fused with clinical metadata (tabular) and report text.

Configured by the ``inputs`` section (columns, text encoder) and ``model.fusion``;
``none`` (the default) keeps the image-only behaviour exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .fusion import FUSIONS, FixedSideInputs, FusionClassifier, Positional
from .inputs import SIDE_INPUT_NAMES, TEXT_DIR, InputEncoder, side_inputs_to

__all__ = [
    "FUSIONS",
    "SIDE_INPUT_NAMES",
    "TEXT_DIR",
    "FixedSideInputs",
    "FusionClassifier",
    "InputEncoder",
    "Positional",
    "build_fused",
    "fusion_options",
    "is_fused",
    "side_inputs_to",
]


def is_fused(model: nn.Module) -> bool:
    return isinstance(model, FusionClassifier)


def fusion_options(cfg, encoder: InputEncoder) -> dict[str, Any]:
    """What rebuilds the fused architecture (stored in bundle.json)."""
    tab = encoder.tabular
    return {"fusion": cfg.model.fusion, "dim": cfg.model.fusion_dim, "n_numeric": len(tab.numeric) if tab else 0,
            "cardinalities": tab.cardinalities if tab else [], "freeze_text": cfg.inputs.freeze_text,
            "text": bool(encoder.text)}


def build_fused(image: nn.Module, num_classes: int, options: dict[str, Any], *, text_source: str | Path | None,
                pretrained_text: bool, modality_dropout: float = 0.0) -> FusionClassifier:
    """``options`` from :func:`fusion_options`; the text encoder from ``text_source`` (hub name or folder):
    with its weights when ``pretrained_text`` (training), else only its architecture (weights follow)."""
    text_model = None
    if options.get("text"):
        from .text import load_text_model

        text_model = load_text_model(str(text_source), pretrained=pretrained_text)
    return FusionClassifier(image, num_classes, fusion=options["fusion"], dim=options["dim"],
                            n_numeric=options["n_numeric"], cardinalities=options["cardinalities"],
                            text_model=text_model, freeze_text=options["freeze_text"],
                            modality_dropout=modality_dropout)
