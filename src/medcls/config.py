"""Typed configuration: pydantic models loaded from YAML with dotted ``--set`` overrides.

Unknown keys and bad values raise :class:`~medcls.errors.ConfigError` naming the
key, what was expected, what came, and a did-you-mean.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .choices import (
    CacheMode,
    Checkpoint,
    Fusion,
    Loss,
    OperatingPoint,
    Optimizer,
    Preset,
    Sampler,
    Scheduler,
    Split,
    StainMethod,
    Stem,
)
from .errors import ConfigError, did_you_mean


class YAML12Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's booleans: only true/false (any case) are booleans.

    PyYAML follows YAML 1.1, where on/off/yes/no/y/n are booleans too, so ``--set data.cache=off``
    or ``cache: off`` arrived as False. Here they stay strings; boolean fields still accept them
    through pydantic (``pretrained: yes`` is True, ``ema: off`` is False).
    """


YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YAML12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`YAML12Loader` (configs, ``--set`` values, run directories)."""
    return yaml.load(text, Loader=YAML12Loader)


MAX_STRING = 4096  # PATH_MAX on Linux: no path, source or name a config holds is longer


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, str_max_length=MAX_STRING)


class DataConfig(_Section):
    source: str = Field("medmnist:pneumoniamnist", description="'kind:argument', e.g. medmnist:pneumoniamnist, folder:/data/chest_xray, csv:/data/labels.csv, hdf5:/data/pcam")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the source (see `medcls datasets`).")
    data_dir: str | None = Field(None, description="Where datasets are looked up/downloaded (then $MEDCLS_DATA_DIR, then ./data).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Fraction of train used for validation when the source has no (or a tiny) val split.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction held out for test when the source has no test split.")
    min_val_size: int = Field(32, ge=0, description="A source val split smaller than this is rebuilt from train.")
    split_seed: int = Field(0, ge=0)
    positive_class: str | None = Field(None, description="Binary tasks: the class name treated as positive (default: the second class).")
    strict: bool = Field(False, description="Fail on unreadable images instead of warning and skipping them.")
    cache: CacheMode = Field(
        "auto", description="Keep the model-size images (uint8/uint16) of each split: memory, disk (shared by runs, "
        "trials, folds and DDP ranks; in cache_dir), off (decode every epoch); auto: memory within cache_memory_gb, "
        "else disk when it has room, else off. on = memory.")
    cache_memory_gb: float | Literal["auto"] = Field(
        "auto", description="Memory the caches of a run may use, in GiB; auto: half the available memory, shared among a node's DDP ranks.")
    cache_dir: str | None = Field(None, description="Where disk caches go (default: $MEDCLS_CACHE_DIR, else ~/.cache/medcls).")
    num_workers: Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = Field(
        "auto", description="Decoding processes for cache builds and uncached epochs (0 = the main process); auto: the cores (shared among a node's DDP ranks, at most 8) for image files and HDF5, 0 for in-memory arrays.")
    limit: int | None = Field(None, ge=1, description="Use at most this many samples per split (smoke tests).")
    leakage_check: Literal["auto", "on", "off"] = Field("auto", description="Check the run's own splits for shared images (exact and near duplicates) and patients before training; the report and model card state it (auto: at most 20,000 images, sampled evenly; on: all).")
    splits_file: str | None = Field(None, description="CSV (id,split[,label,group]) from `medcls data split`: use exactly these train/val/test splits.")


class TransformConfig(_Section):
    preset: Preset = Field(
        "auto", description="Augmentation/TTA preset. auto: by modality (see medcls.defaults), e.g. no flips for x-ray and CT.")
    image_size: int | None = Field(None, ge=8, le=4096, description="Square input size; default: the dataset's native size when <= 64, else the model's.")
    clahe: bool = Field(False, description="Contrast-limited adaptive histogram equalisation (x-ray).")
    clahe_clip: float = Field(2.0, gt=0)
    strength: float = Field(1.0, ge=0, le=3, description="Scales every augmentation magnitude; 0 disables augmentation.")
    hflip: bool | None = Field(None, description="Random horizontal flips (default: the preset's choice; off for xray).")
    stain: StainMethod = Field(
        "none", description="H&E stain normalisation of RGB images, fitted on stain_reference and stored in the run/bundle.")
    stain_reference: str | None = Field(
        None, description="Reference patch image, or a JSON from `medcls data stain-reference`; read once at training.")


class InputsConfig(_Section):
    numeric: list[str] = Field(default_factory=list, description="Numeric metadata columns (standardised on train only; missing -> flag).")
    categorical: list[str] = Field(default_factory=list, description="Categorical metadata columns (vocabulary from train; unseen -> 'unknown').")
    text: str | None = Field(None, description="One free-text column (report, referral note) encoded by text_encoder.")
    text_encoder: str | None = Field(None, description="Hugging Face model name (e.g. dmis-lab/biobert-v1.1) or a local directory.")
    text_max_length: int = Field(128, ge=4, le=4096, description="Tokens per text; longer texts are truncated (counted).")
    freeze_text: bool = Field(True, description="Keep the text encoder's weights fixed (else fine-tune at lr x train.text_lr_scale).")

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical, *([self.text] if self.text else [])]


class ModelConfig(_Section):
    name: str = "resnet18"
    pretrained: bool = False
    weights: str | None = Field(None, description="Local .safetensors weights to load into the backbone.")
    in_chans: int | None = Field(None, ge=1, le=4, description="Model input channels (default: the dataset's).")
    stem: Stem = Field(
        "auto", description="ResNet stem for small inputs. small: 3x3 stride-1 conv + max-pool (/2); "
        "tiny: 3x3 stride-1, no max-pool (full resolution, ~4x the compute); auto: small when the input is <= 64 px.")
    drop_rate: float = Field(0.0, ge=0, lt=1)
    freeze_backbone: bool = False
    fusion: Fusion = Field(
        "none", description="How image and `inputs` (metadata, text) combine; none = image only, meta_only = no image.")
    fusion_dim: int = Field(64, ge=4, le=4096, description="Width of the per-modality embeddings in the fusion head.")


class TrainConfig(_Section):
    epochs: Annotated[int, Field(ge=1, le=10_000)] | Literal["auto"] = Field(
        "auto", description="Epochs; auto: about 48k training images' worth, clamped to 3-100 (see medcls.defaults).")
    batch_size: int = Field(128, ge=1, le=65_536)
    optimizer: Optimizer = "adamw"
    lr: float = Field(2e-3, gt=0, le=10)
    backbone_lr_scale: float = Field(1.0, ge=0, le=10, description="Backbone LR = lr x this (head uses lr).")
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Scheduler = "onecycle"
    warmup_epochs: float = Field(1.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    loss: Loss = "auto"
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0)
    class_weights: Literal["auto", "none", "balanced"] | list[float] = Field(
        "auto", description="Loss class weights; auto: balanced for binary tasks, none for multiclass and multilabel.")
    sampler: Sampler = "random"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    grad_accum_steps: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    monitor: str = Field("auc", description="Validation metric used for best checkpoint and early stopping.")
    early_stopping_patience: int | None = Field(None, ge=1)
    head_only_epochs: int = Field(0, ge=0, description="Two-stage schedule: train only the head for this many epochs first.")
    mixup: float = Field(0.0, ge=0, description="Mixup Beta alpha (0 = off; 0.2-0.4 typical).")
    cutmix: float = Field(0.0, ge=0, description="CutMix Beta alpha (0 = off; 1.0 typical). With mixup, each batch uses one.")
    mix_prob: float = Field(1.0, ge=0, le=1, description="Chance that a batch is mixed when mixup/cutmix is on.")
    text_lr_scale: float = Field(0.1, ge=0, le=10, description="Text encoder LR = lr x this when inputs.freeze_text is false.")
    modality_dropout: float = Field(0.1, ge=0, lt=1, description="Chance per sample and modality (metadata, text) of being replaced by its learned 'missing' embedding during training.")
    ema: bool | Literal["auto"] = Field(
        "auto", description="Evaluate and checkpoint an exponential moving average of the weights; auto: on when "
        "the run has enough optimizer steps for ema_decay to forget the initial weights (see medcls.defaults).")
    ema_decay: float = Field(0.99, gt=0, lt=1)
    channels_last: bool = True
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1)
    progress: bool = True


class EvalConfig(_Section):
    split: Split = "test"
    batch_size: int = Field(256, ge=1)
    threshold: float = Field(0.5, gt=0, lt=1, description="Threshold of the headline metrics (MedMNIST reports ACC at 0.5).")
    checkpoint: Checkpoint = "best"
    n_bootstrap: int = Field(2000, ge=0, le=100_000, description="Stratified bootstrap resamples for 95% CIs (0 = no CIs).")
    calibrate: bool = Field(True, description="Fit temperature scaling on the validation split.")
    operating_point: OperatingPoint = Field(
        "default", description="Binary decision rule chosen on validation and used by predict.")
    tta: bool = Field(False, description="Also report test-time augmentation (flips; dihedral for histology).")
    subgroups: list[str] = Field(default_factory=list, description="Metadata columns (sex, age, centre, view, scanner ...) to report metrics per subgroup for, with CIs, n and the largest gap (numeric columns in quartile bands).")
    target_sensitivity: float = Field(0.95, gt=0, le=1)
    target_specificity: float = Field(0.95, gt=0, le=1)


class TrackingConfig(_Section):
    backend: Literal["none", "mlflow", "tensorboard"] = Field(
        "none", description="Experiment tracking (the 'tracking' extra): mlflow (params, per-epoch metrics, the run's "
        "artefacts, each exported bundle as a registered model version) or tensorboard; none/off: no tracking.")
    uri: str | None = Field(None, description="MLflow tracking URI (http://host:5000, sqlite:///path/mlflow.db); default: "
                            "sqlite:///<output_dir>/mlflow.db. TensorBoard: the log directory; default <output_dir>/tensorboard.")
    experiment: str | None = Field(None, description="MLflow experiment and registered model name (default: the run name).")
    register_model: bool = Field(True, description="MLflow: register each bundle `medcls export` writes as a new model version.")
    tags: dict[str, str] = Field(default_factory=dict, description="MLflow: tags set on the run (`medcls tune` "
                                 "tags each trial with medcls.study, medcls.trial and medcls.worker).")

    @field_validator("backend", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:  # `tracking.backend: off` / false / no mean none
        return "none" if v is False or v is None or (isinstance(v, str) and v.lower() in {"off", "no", "false"}) else v


class Config(_Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", max_length=200,
                      description="Run name: the run directory is NAME-YYYYmmdd-HHMMSS (file names stop at 255 bytes).")
    seed: int = Field(0, ge=0)
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    transforms: TransformConfig = Field(default_factory=TransformConfig)
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_shorthand(cls, v: Any) -> Any:  # `tracking: off` (YAML False) / `tracking: mlflow`
        return {"backend": v} if v is None or isinstance(v, (bool, str)) else v

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.train.loss == "bce" and self.train.sampler == "balanced":
            raise ValueError("train.sampler=balanced is not defined for multilabel (bce) training")
        i = self.inputs
        if self.model.fusion != "none":
            if not i.columns:
                raise ValueError(f"model.fusion={self.model.fusion} needs extra inputs: set inputs.numeric, "
                                 "inputs.categorical and/or inputs.text")
            if self.train.mixup or self.train.cutmix:
                raise ValueError("train.mixup/cutmix mix images across samples, which breaks the pairing with their "
                                 "metadata: use them with model.fusion=none only")
        if i.text and not i.text_encoder:
            raise ValueError(f"inputs.text={i.text!r} needs inputs.text_encoder (a Hugging Face model name such as "
                             "dmis-lab/biobert-v1.1, or a local directory)")
        dup = sorted({c for c in i.columns if i.columns.count(c) > 1})
        if dup:
            raise ValueError(f"inputs: column(s) {dup} are declared more than once")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _section_fields(model: type[BaseModel], path: list[str]) -> tuple[type[BaseModel] | None, list[str]]:
    """Walk ``path`` through nested models; return the innermost model class and valid keys."""
    cls: type[BaseModel] | None = model
    for key in path:
        if cls is None:
            return None, []
        field = cls.model_fields.get(key)
        ann = field.annotation if field else None
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return cls, list(cls.model_fields) if cls else []


def _field_path(loc: tuple) -> list[str]:
    """The config keys of an error location, without pydantic's union-member tags (``literal['auto']``)."""
    return [str(p) for p in loc if isinstance(p, int) or str(p).isidentifier()]


def _format_validation_error(err: ValidationError) -> str:
    """All problems on one line: ``invalid configuration: key: what was expected (got what came); ...``."""
    parts: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in err.errors():
        loc = _field_path(e["loc"])
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parent, valid = _section_fields(Config, loc[:-1])
            if parent is None:  # free-form dict (e.g. data.options) never forbids
                valid = []
            prefix = ".".join(loc[:-1]) + "." if len(loc) > 1 else ""
            parts.setdefault(key, []).append(
                f"unknown key {key!r}.{did_you_mean(key, [prefix + v for v in valid])}"
                + (f" Valid keys here: {', '.join(valid)}." if valid else ""))
            continue
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "a mapping"
        got[key] = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(str(value))} characters)"
        parts.setdefault(key, []).append(e["msg"])
    items = [" ".join(msgs) if k not in got else f"{k or 'config'}: {'; or '.join(msgs)} (got {got[k]})"
             for k, msgs in parts.items()]
    return "invalid configuration: " + "; ".join(items)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is read as YAML (``5`` -> int, ``[1,2]`` -> list)."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE such as train.epochs=5, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set expects a dotted key such as train.epochs, got {key!r}")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {'.'.join(path[: depth + 1])!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def build_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    raw = apply_overrides(dict(raw or {}), list(overrides or []))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``KEY=VALUE`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file not found: {p} (expected a YAML file such as configs/pneumoniamnist.yaml)")
        try:
            loaded = load_yaml(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Config file {p} must hold a mapping at the top level, got {type(loaded).__name__}")
        raw = loaded or {}
    return build_config(raw, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
