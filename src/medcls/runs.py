"""Run directories: creation (never overwriting), environment capture, and loading for later use.

Layout of ``runs/<name>-<YYYYmmdd-HHMMSS>/``::

    config.yaml        resolved configuration (autos resolved, paths absolute: the folder stands alone)
    model.json         ModelSpec: architecture, classes, channels, stem, fusion, preprocessing, inputs
    data.json          split summary, data notes, the autos chosen
    env.json           versions, device, git sha, command line
    history.csv        one row per epoch
    checkpoints/       best.safetensors, last.safetensors (+ .json sidecars)
    postprocess.json   temperature and operating points per checkpoint, fitted on val (`medcls calibrate`)
    metrics.json       best validation metrics (and the evaluations when run)
    eval-<split>/      metrics.json, predictions.csv, report.html, model_card.md, plots
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .artefact import MODEL_FILE, Artefact, ModelSpec, Postprocess, open_artefact
from .config import Config, build_config, load_yaml
from .data.spec import DatasetSpec
from .errors import RunError
from .transforms import Preprocess, PreprocessConfig
from .utils import atomic_write_json, atomic_write_text, check_new_output, new_unique_dir


def new_run_dir(output_dir: str | Path, name: str, run_dir: str | Path | None = None) -> Path:
    """Create and return a fresh run directory; an existing one is never reused."""
    if run_dir is not None:
        p = Path(run_dir)
        check_new_output(p, "runs", hint=f"choose another --run-dir or use --resume {p}")
        p.mkdir(parents=True)
        return p
    return new_unique_dir(output_dir, name, "run directory")


def _absolute(value: str | None) -> str | None:
    """``value`` made absolute when it names an existing relative path (else unchanged)."""
    if not value or not isinstance(value, str):
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if not p.is_absolute() and p.exists() else value


def standalone_config(cfg: Config) -> Config:
    """``cfg`` with every relative file path it names made absolute, so the run directory can be
    evaluated and resumed from anywhere (copied elsewhere included, while the data stays where it is)."""
    d = cfg.data
    kind, sep, arg = d.source.partition(":")
    data_dir = _absolute(d.data_dir)
    if data_dir is None:  # where the lookup would find datasets today: $MEDCLS_DATA_DIR, then ./data
        found = [p for p in (os.environ.get("MEDCLS_DATA_DIR"), "data") if p and Path(p).expanduser().is_dir()]
        data_dir = str(Path(found[0]).expanduser().resolve()) if found else None
    data = d.model_copy(update={
        "source": f"{kind}:{_absolute(arg)}" if sep and kind != "medmnist" else d.source,
        "splits_file": _absolute(d.splits_file), "data_dir": data_dir,
        "options": {k: _absolute(v) if isinstance(v, str) else v for k, v in d.options.items()}})
    return cfg.model_copy(update={
        "data": data,
        "transforms": cfg.transforms.model_copy(update={"stain_reference": _absolute(cfg.transforms.stain_reference)}),
        "model": cfg.model.model_copy(update={"weights": _absolute(cfg.model.weights)}),
        "inputs": cfg.inputs.model_copy(update={"text_encoder": _absolute(cfg.inputs.text_encoder)})})


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


LEAKAGE_FILE = "leakage.json"


@dataclass
class Run:
    """A finished or running training run, loaded from its directory.

    ``artefact`` (:class:`~medcls.artefact.Artefact`) is how the trained model is read;
    ``config`` and ``data_summary`` are what it was trained with and on.
    """

    path: Path
    config: Config
    data_summary: dict[str, Any]
    artefact: Artefact

    @property
    def model_spec(self) -> ModelSpec:
        return self.artefact.spec

    @property
    def dataset(self) -> DatasetSpec:
        """What the model predicts: task, class names, positive class (the model spec's dataset)."""
        return self.artefact.spec.dataset

    @property
    def preprocess_cfg(self) -> PreprocessConfig:
        return self.artefact.spec.preprocess

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.preprocess_cfg)

    @property
    def inputs(self):
        """The fitted :class:`~medcls.multimodal.InputEncoder` of a fused run (metadata/text), else None."""
        return self.artefact.inputs

    def checkpoint_path(self, which: str = "best") -> Path:
        return self.artefact.weights_path(which)

    def metrics(self) -> dict[str, Any]:
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    @property
    def leakage(self) -> dict[str, Any] | None:
        """The check of this run's own splits for shared images and patients (``leakage.json``), if it ran."""
        p = self.path / LEAKAGE_FILE
        try:
            return json.loads(p.read_text()) if p.is_file() else None
        except (OSError, ValueError):
            return None

    def build_model(self, which: str = "best", device: str = "cpu"):
        """The trained model (eval mode) with weights from the ``which`` checkpoint, and its metadata."""
        return self.artefact.build_model(which, device)

    def postprocess(self, which: str = "best") -> Postprocess | None:
        """The calibration fitted for the ``which`` checkpoint (None: never fitted, or stale)."""
        return self.artefact.postprocess(which)

    def with_config(self, cfg: Config) -> Run:
        return replace(self, config=cfg)


def write_run_files(path: Path, cfg: Config, model_spec: ModelSpec, summary: dict[str, Any]) -> None:
    """``config.yaml`` (resolved), ``model.json`` (the ModelSpec) and ``data.json`` (splits, notes, autos)."""
    atomic_write_text(path / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_json(path / MODEL_FILE, model_spec.to_dict())
    atomic_write_json(path / "data.json", summary)


def load_run(path: str | Path) -> Run:
    """Load a run directory written by ``medcls train``."""
    p = Path(path)
    if not p.is_dir():
        raise RunError(f"run directory not found: {p}" if not p.exists() else
                       f"{p} is a file; expected a run directory written by `medcls train`")
    for f in ("config.yaml", "data.json", MODEL_FILE):
        if not (p / f).is_file():
            raise RunError(f"{p} is not a medcls run directory (missing {f})")
    try:
        cfg = build_config(load_yaml((p / "config.yaml").read_text()))
        summary = json.loads((p / "data.json").read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise RunError(f"{p}: config.yaml or data.json is unreadable: {e}") from None
    art = open_artefact(p)
    if art.kind != "run":
        raise RunError(f"{p} is a bundle, not a run directory")
    return Run(p, cfg, summary, art)
