"""``ModelSpec``: everything that rebuilds a trained model and feeds it, written once at training time.

A run directory stores it as ``model.json``; a bundle carries the same document in
``bundle.json["model"]``. :meth:`ModelSpec.build` is the one place a medcls model is
assembled: for training (with pretrained or local weights), and for every loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from ..config import Config
from ..data.spec import DatasetSpec
from ..errors import ModelError, RunError
from ..models import STEMS
from ..transforms import PreprocessConfig

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Architecture, classes, channels, stem, fusion, preprocessing and extra inputs of one model.

    ``fusion`` (fused image + metadata/text models) holds the fusion head's options and
    ``inputs`` the fitted metadata/text encoding (:class:`~medcls.multimodal.InputEncoder`
    as a dict); both are None for image-only models. ``preset`` is the modality preset
    (augmentation at training, test-time-augmentation views at evaluation). ``pruning``
    (pruned models only) holds the ratio and torch-pruning's history, replayed by :meth:`build`.
    ``ensemble`` (ensembles only, :mod:`medcls.experiments.ensemble`) holds the members' own specs, their
    temperatures and weights and the runs they came from; :meth:`build` assembles a
    :class:`~medcls.models.ensemble.Ensemble` whose classes and preprocessing are the members' shared ones.
    """

    architecture: str
    dataset: DatasetSpec
    preprocess: PreprocessConfig
    stem: str = "default"
    drop_rate: float = 0.0
    preset: str = "generic"
    fusion: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    pruning: dict[str, Any] | None = None
    ensemble: dict[str, Any] | None = None
    format_version: int = field(default=FORMAT_VERSION)

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ModelError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if (self.fusion is None) != (self.inputs is None):
            raise ModelError("a fused model needs both its fusion options and its inputs (or neither)")
        if self.pruning is not None and not (isinstance(self.pruning, dict)
                                             and isinstance(self.pruning.get("history"), list)):
            raise ModelError("a pruned model spec needs its pruning history: a 'pruning' object with a 'history' list")
        if self.ensemble is not None:
            members = self.ensemble.get("members") if isinstance(self.ensemble, dict) else None
            if not isinstance(members, list) or len(members) < 2:
                raise ModelError("an ensemble spec needs an 'ensemble' object with a 'members' list of at least 2 "
                                 "model specs")

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def in_chans(self) -> int:
        return self.preprocess.in_chans

    @property
    def fused(self) -> bool:
        return self.fusion is not None

    @property
    def uses_text(self) -> bool:
        return bool(self.fusion and self.fusion.get("text"))

    def build(self, *, pretrained: bool = False, weights: str | None = None, text_source: str | None = None,
              pretrained_text: bool = False, modality_dropout: float = 0.0) -> nn.Module:
        """The model with fresh (or ``pretrained`` / local ``weights``) parameters; the caller loads trained ones.

        Fused models with text also need ``text_source``: a Hugging Face name or the folder with the
        encoder's files (its weights when ``pretrained_text``, else only its architecture).
        """
        from ..models import create_model

        if self.ensemble is not None:
            return self._build_ensemble()
        model = create_model(self.architecture, self.num_classes, in_chans=self.in_chans, pretrained=pretrained,
                             weights=weights, stem=self.stem, drop_rate=self.drop_rate)
        if self.pruning is not None:
            from ..models.pruning import replay_pruning

            replay_pruning(model, self.pruning["history"], in_chans=self.in_chans, size=self.preprocess.size)
        if self.fusion is None:
            return model
        from ..multimodal import build_fused

        return build_fused(model, self.num_classes, self.fusion, text_source=text_source,
                           pretrained_text=pretrained_text, modality_dropout=modality_dropout)

    def member_specs(self) -> list[ModelSpec]:
        """The members' own specs (ensembles; ``[]`` for a single model)."""
        if self.ensemble is None:
            return []
        return [ModelSpec.from_dict(d, f"ensemble member {i}") for i, d in enumerate(self.ensemble["members"])]

    def _build_ensemble(self) -> nn.Module:
        from ..models.ensemble import Ensemble

        e = self.ensemble or {}
        return Ensemble([m.build() for m in self.member_specs()], self.dataset.task,
                        temperatures=e.get("temperatures"), weights=e.get("weights"))

    def with_(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "architecture": self.architecture, "stem": self.stem,
                "drop_rate": self.drop_rate, "preset": self.preset, "num_classes": self.num_classes,
                "in_chans": self.in_chans, "dataset": self.dataset.to_dict(), "preprocess": self.preprocess.to_dict(),
                "fusion": self.fusion, "inputs": self.inputs,
                **({"pruning": self.pruning} if self.pruning is not None else {}),
                **({"ensemble": self.ensemble} if self.ensemble is not None else {})}

    @classmethod
    def for_config(cls, cfg: Config, dataset: DatasetSpec, inputs=None) -> ModelSpec:
        """The spec a config trains on ``dataset`` (autos resolved; ``inputs``: a fitted InputEncoder)."""
        pre = resolve_preprocess(cfg, dataset)
        fusion = None
        if inputs is not None:
            from ..multimodal import fusion_options

            fusion = fusion_options(cfg, inputs)
        return cls(architecture=cfg.model.name, dataset=dataset, preprocess=pre,
                   stem=resolve_stem(cfg.model.name, pre.size, cfg.model.stem), drop_rate=cfg.model.drop_rate,
                   preset=cfg.transforms.preset, fusion=fusion, inputs=inputs.to_dict() if inputs else None)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model spec") -> ModelSpec:
        if not isinstance(d, dict):
            raise RunError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise RunError(f"{where}: format_version {version!r} is not supported by this medcls "
                           f"(expected {FORMAT_VERSION}); retrain or re-export with this version")
        try:
            spec = cls(architecture=str(d["architecture"]), dataset=DatasetSpec.from_dict(d["dataset"]),
                       preprocess=PreprocessConfig.from_dict(d["preprocess"]), stem=d.get("stem", "default"),
                       drop_rate=float(d.get("drop_rate", 0.0)), preset=d.get("preset", "generic"),
                       fusion=d.get("fusion"), inputs=d.get("inputs"), pruning=d.get("pruning"),
                       ensemble=d.get("ensemble"))
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{where} is incomplete or malformed: {type(e).__name__}: {e}") from None
        for key, have in (("num_classes", spec.num_classes), ("in_chans", spec.in_chans)):
            if key in d and d[key] != have:
                raise RunError(f"{where}: {key} is {d[key]} but the dataset/preprocessing say {have}")
        return spec


def resolve_preprocess(cfg: Config, dataset: DatasetSpec) -> PreprocessConfig:
    """Input size, channels, CLAHE and stain normalisation of a config on ``dataset`` (``auto`` resolved:
    native size up to 64 px, else the architecture's default; the stain reference fitted once)."""
    from ..models.factory import default_input_size
    from ..transforms.stain import resolve_stain

    t = cfg.transforms
    native = dataset.native_size
    size = t.image_size or (native if native and native <= 64 else default_input_size(cfg.model.name))
    in_chans = cfg.model.in_chans or dataset.channels
    stain = resolve_stain(t.stain, t.stain_reference, channels=dataset.channels, dataset=dataset.name)
    return PreprocessConfig(size=size, in_chans=in_chans, clahe=t.clahe, clahe_clip=t.clahe_clip,
                            stain=t.stain, stain_params=stain)


def resolve_stem(architecture: str, size: int, requested: str) -> str:
    """``model.stem``: as requested, or (``auto``) ``small`` for ResNet-style models on inputs <= 64 px."""
    if requested != "auto":
        return requested
    if size > 64:
        return "default"
    from ..models import create_model

    try:  # only ResNet-style models (conv1 + maxpool) take the small stem
        create_model(architecture, 2, stem="small")
        return "small"
    except ModelError:
        return "default"
