"""One loader for every trained artefact: a run directory or an exported bundle.

``load(path, checkpoint="best") -> (model, preprocess, postprocess)``, in the spirit of
open_clip's ``create_model_and_transforms``: the model in eval mode with its trained
weights, the :class:`~medcls.transforms.Preprocess` it was trained with and the
:class:`Postprocess` fitted for that very checkpoint. Runs, ``Predictor``, export,
Grad-CAM, the server and the experiments all go through :func:`open_artefact`.

A run directory holds ``model.json`` (the :class:`ModelSpec`), ``checkpoints/`` and
``postprocess.json``; a bundle holds ``bundle.json`` (the same spec under ``model``,
the exported checkpoint's post-processing under ``postprocess``, and the sha256 of
every file) beside ``model.safetensors`` / ``model.onnx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, get_args

import torch
from torch import nn

from ..choices import Checkpoint
from ..errors import RunError
from ..multimodal.inputs import TEXT_DIR
from ..transforms import Preprocess
from ..utils import file_sha256, leftover_temp_files
from .postprocess import Postprocess, read_postprocess
from .spec import ModelSpec

log = logging.getLogger("medcls")

MODEL_FILE = "model.json"
BUNDLE_FILE = "bundle.json"

CHECKPOINTS = get_args(Checkpoint)
BUNDLE_FORMATS = (2, 3, 4)  # 2: no digest of bundle.json itself (loads with a warning); 4: recalibrated


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path} is missing or unreadable: {e}") from None


def bundle_digest(info: dict[str, Any]) -> str:
    """sha256 of bundle.json's canonical form (sorted keys, no whitespace), its own ``integrity`` left out:
    the file hashes it lists then cover every other file, so the whole bundle is checked on load."""
    body = {k: v for k, v in info.items() if k != "integrity"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_bundle(path: Path, info: dict[str, Any]) -> None:
    """bundle.json's own digest (format 3+); format 2 bundles, which have none, load with a warning."""
    where = path / BUNDLE_FILE
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise RunError(f"{where} is malformed: expected a JSON object with a 'files' table")
    if info.get("format_version") not in BUNDLE_FORMATS:
        raise RunError(f"{where}: format_version {info.get('format_version')!r} is not one this medcls reads "
                       f"({', '.join(map(str, BUNDLE_FORMATS))}); export it again with this version")
    integrity = info.get("integrity")
    if integrity is None and info.get("format_version") == 2:
        log.warning("%s has no integrity digest (exported before medcls checked bundle.json itself): its "
                    "metadata cannot be verified; export it again", where)
        return
    if not isinstance(integrity, dict) or integrity.get("sha256") != bundle_digest(info):
        raise RunError(f"{where} was modified after export (its contents do not match the sha256 in its "
                       "'integrity' field): export the bundle again from its run")
    _warn_leftovers(path)


def _warn_leftovers(folder: Path) -> None:
    """Temporary files of a killed write are never read as results: say so, and that they can go."""
    for p in sorted(leftover_temp_files(folder)):
        log.warning("ignoring %s: a temporary file left by an interrupted write (safe to delete)", p)


class Artefact:
    """A trained model on disk (``kind``: ``run`` or ``bundle``) and how to load each checkpoint of it."""

    def __init__(self, path: Path, kind: str, spec: ModelSpec, info: dict[str, Any] | None = None) -> None:
        self.path, self.kind, self.spec, self.info = path, kind, spec, info or {}
        self._inputs: Any = None

    # ------------------------------------------------------------------ files
    def checkpoint_name(self, checkpoint: str) -> str:
        if checkpoint not in CHECKPOINTS:
            raise RunError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        if self.kind == "bundle":
            return self.info.get("source", {}).get("checkpoint", "best")
        return checkpoint

    def weights_path(self, checkpoint: str = "best") -> Path:
        name = self.checkpoint_name(checkpoint)
        if self.kind == "bundle":
            return self.file("model.safetensors")
        return self.path / "checkpoints" / f"{name}.safetensors"

    def file(self, name: str, *, verify: bool = True) -> Path:
        """A bundle file, checked against the sha256 in bundle.json."""
        files = self.info.get("files", {})
        if name not in files:
            raise RunError(f"bundle {self.path} has no {name} (it has {', '.join(sorted(files)) or 'no files'})")
        p = self.path / name
        if verify and (not p.is_file() or file_sha256(p) != files[name].get("sha256")):
            raise RunError(f"{p} does not match the sha256 in bundle.json (missing, modified or corrupt)")
        return p

    @property
    def text_dir(self) -> Path:
        return self.path / TEXT_DIR

    # ------------------------------------------------------------------ parts
    @property
    def inputs(self):
        """The fitted :class:`~medcls.multimodal.InputEncoder` of a fused model, else None."""
        if self.spec.inputs is None:
            return None
        if self._inputs is None:
            from ..multimodal import InputEncoder

            self._inputs = InputEncoder.from_dict(self.spec.inputs, self.path)
        return self._inputs

    @property
    def ood(self):
        """The bundle's out-of-distribution gate (:class:`~medcls.artefact.ood.OodGate`), None when it has none
        (a run directory, a fused model, a bundle exported before the gate existed)."""
        from .ood import OOD_FILE, OodGate

        if self.kind != "bundle" or OOD_FILE not in self.info.get("files", {}):
            return None
        return OodGate.load(self.file(OOD_FILE))

    @property
    def drift(self):
        """The bundle's drift reference (:class:`~medcls.metrics.drift.DriftReference`), None when it has none."""
        from .drift import DRIFT_FILE, load_reference

        if self.kind != "bundle" or DRIFT_FILE not in self.info.get("files", {}):
            return None
        return load_reference(self.file(DRIFT_FILE))

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.spec.preprocess)

    def postprocess(self, checkpoint: str = "best") -> Postprocess | None:
        """The post-processing fitted for ``checkpoint``; None when it was never fitted (or is stale)."""
        name = self.checkpoint_name(checkpoint)
        if self.kind == "bundle":
            return Postprocess.from_dict(self.info.get("postprocess") or {}, f"{self.path}/bundle.json postprocess")
        return read_postprocess(self.path, name, self.weights_path(name))

    def postprocess_or_default(self, checkpoint: str = "best") -> Postprocess:
        """:meth:`postprocess`, or T = 1 and threshold 0.5 with a warning that says how to calibrate."""
        post = self.postprocess(checkpoint)
        if post is not None:
            return post
        msg = (f"checkpoint {checkpoint!r} of {self.path} is not calibrated: T = 1 and threshold 0.5; "
               f"run `medcls calibrate {self.path} --checkpoint {checkpoint}`")
        log.warning("%s", msg)
        return Postprocess.uncalibrated(msg)

    def state_dict(self, checkpoint: str = "best") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The trained weights of ``checkpoint`` and its metadata (epoch ...)."""
        from ..engine.checkpoint import load_checkpoint, split_prefix

        path = self.weights_path(checkpoint)
        if not path.is_file():
            if self.spec.ensemble is not None:
                raise RunError(f"{self.path} is an ensemble: it has only the 'best' checkpoint (its members' best)")
            raise RunError(f"{self.path} has no {checkpoint} checkpoint (was training interrupted before "
                           "epoch 1 ended?)")
        tensors, meta = load_checkpoint(path, device="cpu", verify=self.kind == "run")  # bundles: bundle.json
        if self.kind == "bundle":
            return tensors, {"epoch": self.info.get("source", {}).get("epoch")}
        # `last` of an EMA run holds the raw weights (to resume) and the averaged ones, which are what
        # training validated and what `best` stores: serve those, so best and last mean the same thing.
        return split_prefix(tensors, "ema/") or split_prefix(tensors, "model/"), meta

    def build_model(self, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
        """The trained model in eval mode on ``device``, and the checkpoint's metadata."""
        model = self.spec.build(text_source=str(self.text_dir) if self.spec.uses_text else None)
        state, meta = self.state_dict(checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise RunError(f"{self.weights_path(checkpoint)} does not match model {self.spec.architecture}: "
                           f"{str(e).splitlines()[0]}") from None
        return model.to(device).eval(), meta

    def load(self, checkpoint: str = "best", device: str | torch.device = "cpu"):
        """(model, preprocess, postprocess) of ``checkpoint``."""
        model, _ = self.build_model(checkpoint, device)
        return model, self.preprocess, self.postprocess_or_default(checkpoint)


def open_artefact(path: str | Path) -> Artefact:
    """A run directory (``model.json``) or a bundle (``bundle.json``) at ``path``."""
    p = Path(path)
    if not p.exists():
        raise RunError(f"not found: {p} (expected a run directory from `medcls train` or a bundle from "
                       "`medcls export`)")
    if not p.is_dir():
        raise RunError(f"{p} is a file; expected a run directory from `medcls train` or a bundle directory "
                       "from `medcls export`")
    if (p / BUNDLE_FILE).is_file():
        info = _read_json(p / BUNDLE_FILE)
        _check_bundle(p, info)
        return Artefact(p, "bundle", ModelSpec.from_dict(info.get("model"), f"{p / BUNDLE_FILE} model"), info)
    if (p / MODEL_FILE).is_file():
        _warn_leftovers(p)
        return Artefact(p, "run", ModelSpec.from_dict(_read_json(p / MODEL_FILE), str(p / MODEL_FILE)))
    raise RunError(f"{p} is neither a medcls run directory (model.json) nor a bundle (bundle.json)")


def load(path: str | Path, checkpoint: str = "best", *, device: str | torch.device = "cpu"):
    """``(model, preprocess, postprocess)`` of a run directory's checkpoint or of a bundle."""
    return open_artefact(path).load(checkpoint, device)
