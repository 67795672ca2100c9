"""Checkpoints as safetensors (never pickle) with JSON metadata inside, written atomically.

One file holds both tensors and metadata, so a checkpoint is complete or
absent, never half-written. A readable ``<name>.json`` sidecar repeats the
metadata for humans.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import RunError
from ..utils import atomic_write_bytes, atomic_write_json, file_sha256

log = logging.getLogger("medcls")

_META_KEY = "medcls"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the checkpoint, then its sidecar with the sha256 of the bytes just written (checked on load)."""
    from safetensors.torch import save

    path = Path(path)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = save(flat, metadata={_META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)
    atomic_write_json(path.with_suffix(".json"), {**meta, "sha256": hashlib.sha256(data).hexdigest()})


def verify_checkpoint(path: Path) -> None:
    """The file's sha256 against the one its sidecar recorded when it was written (flipped bytes load silently
    otherwise: safetensors checks the header, not the tensor data)."""
    sidecar = path.with_suffix(".json")
    try:
        want = json.loads(sidecar.read_text()).get("sha256")
    except (OSError, json.JSONDecodeError):
        want = None
    if want is None:
        log.warning("%s has no recorded sha256 (sidecar %s missing or old): loaded unverified", path, sidecar.name)
        return
    if file_sha256(path) != want:
        raise RunError(f"{path} does not match the sha256 recorded when it was written: the file is corrupt or "
                       "was modified; restore it or retrain")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint not found: {path}")
    if verify:
        verify_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # safetensors raises SafetensorError / OSError
        raise RunError(f"{path} is not a readable medcls checkpoint: {e}") from None
    return tensors, meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"optim/{idx}/{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, vals in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
