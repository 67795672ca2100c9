"""Run directories: creation (never overwriting), environment capture, and loading for later use.

Layout of ``runs/<name>-<YYYYmmdd-HHMMSS>/``::

    config.yaml        resolved configuration
    env.json           versions, device, git sha, command line
    data.json          DatasetSpec, preprocessing and split summary
    history.csv        one row per epoch
    checkpoints/       best.safetensors, last.safetensors (+ .json sidecars)
    metrics.json       best validation metrics (and the test evaluation when run)
    eval-<split>/      metrics.json, predictions.csv, roc.png, pr.png, confusion.png
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import Config, build_config
from .data.spec import DatasetSpec
from .errors import RunError
from .transforms import Preprocess, PreprocessConfig
from .utils import atomic_write_json, new_unique_dir


def new_run_dir(output_dir: str | Path, name: str, run_dir: str | Path | None = None) -> Path:
    """Create and return a fresh run directory; an existing one is never reused."""
    if run_dir is not None:
        p = Path(run_dir)
        if p.exists():
            raise RunError(f"run directory {p} already exists; choose another --run-dir or use --resume {p}")
        p.mkdir(parents=True)
        return p
    return new_unique_dir(output_dir, name, "run directory")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str, world_size: int = 1) -> dict[str, Any]:
    import numpy
    import timm
    import torch

    from . import __version__

    return {
        "medcls": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "timm": timm.__version__, "numpy": numpy.__version__,
        "device": device, "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(), "world_size": world_size, "git_sha": _git_sha(),
        "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass
class Run:
    """A finished or running training run, loaded from its directory."""

    path: Path
    config: Config
    spec: DatasetSpec
    preprocess_cfg: PreprocessConfig
    data_summary: dict[str, Any]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.preprocess_cfg)

    def checkpoint_path(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise RunError(f"checkpoint must be 'best' or 'last', got {which!r}")
        return self.path / "checkpoints" / f"{which}.safetensors"

    def metrics(self) -> dict[str, Any]:
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    @property
    def inputs(self):
        """The fitted :class:`~medcls.multimodal.InputEncoder` of a fused run (metadata/text), else None."""
        if self.config.model.fusion == "none" or not self.data_summary.get("inputs"):
            return None
        if "_inputs" not in self.__dict__:
            from .multimodal import InputEncoder

            self.__dict__["_inputs"] = InputEncoder.from_dict(self.data_summary["inputs"], self.path)
        return self.__dict__["_inputs"]

    def build_model(self, which: str = "best", device: str = "cpu"):
        """The trained model (eval mode) with weights from the ``which`` checkpoint."""
        from .engine.checkpoint import load_checkpoint, split_prefix
        from .models import create_model

        m = self.config.model
        model = create_model(m.name, self.spec.num_classes,
                             in_chans=self.preprocess_cfg.in_chans, pretrained=False,
                             stem=self.data_summary.get("stem", "default"))
        if self.inputs is not None:
            from .multimodal import TEXT_DIR, build_fused, fusion_options

            model = build_fused(model, self.spec.num_classes, fusion_options(self.config, self.inputs),
                                text_source=self.path / TEXT_DIR, pretrained_text=False)
        tensors, meta = load_checkpoint(self.checkpoint_path(which), device="cpu")
        # `last` of an EMA run holds the raw weights (to resume) and the averaged ones, which are what
        # training validated and what `best` stores: serve those, so best and last mean the same thing.
        state = split_prefix(tensors, "ema/") or split_prefix(tensors, "model/")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise RunError(f"{self.checkpoint_path(which)} does not match model {m.name}: {e}") from None
        return model.to(device).eval(), meta


def write_run_files(path: Path, cfg: Config, spec: DatasetSpec, pre: PreprocessConfig, summary: dict[str, Any]) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_json(path / "data.json", {"spec": spec.to_dict(), "preprocess": pre.to_dict(), **summary})


def load_run(path: str | Path) -> Run:
    """Load a run directory written by ``medcls train``."""
    p = Path(path)
    if not p.is_dir():
        raise RunError(f"run directory not found: {p}")
    for f in ("config.yaml", "data.json"):
        if not (p / f).is_file():
            raise RunError(f"{p} is not a medcls run directory (missing {f})")
    cfg = build_config(yaml.safe_load((p / "config.yaml").read_text()))
    d = json.loads((p / "data.json").read_text())
    summary = {k: v for k, v in d.items() if k not in ("spec", "preprocess")}
    return Run(p, cfg, DatasetSpec.from_dict(d["spec"]), PreprocessConfig.from_dict(d["preprocess"]), summary)
