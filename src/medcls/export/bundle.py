"""Bundles: everything needed to serve a model, verified at export time.

``bundle/``::

    bundle.json          medcls version, architecture, classes, task, positive class,
                         preprocessing, temperature, operating points, data summary,
                         parity and INT8 checks, sha256 of every file
    model.safetensors    Classifier weights (normalisation included)
    model.onnx           fp32, dynamic batch (input ``image`` in [0, 1], output ``logits``; fused models
                         also take their named metadata/text inputs, listed in bundle.json ``inputs``)
    text_encoder/        fused models with text: tokenizer files and the encoder's config.json
    model.int8.onnx      optional static INT8 (QDQ), calibrated on training images
    model.ts             optional TorchScript

The bundle is assembled in a temporary folder and renamed into place, so it is
complete or absent; an existing folder is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.sources import load_data
from ..data.spec import DatasetSpec
from ..engine.predict import probabilities
from ..errors import ModelError, RunError
from ..metrics import compute_metrics
from ..runs import Run, load_run
from ..transforms import PreprocessConfig
from ..utils import atomic_write_json

log = logging.getLogger("medcls")

FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _tensors(run: Run, table, n: int) -> torch.Tensor:
    idx = np.linspace(0, len(table) - 1, min(n, len(table))).astype(int)
    pre = run.preprocess
    return torch.stack([pre(table.load(int(i))) for i in idx]), idx


def _extras(run: Run, table, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """The metadata/text inputs of rows ``idx`` of ``table`` for a fused run (``{}`` for image-only)."""
    if run.inputs is None:
        return {}
    return run.inputs.encode_table(table.subset(idx), "val split")


def _auc(spec: DatasetSpec, labels: np.ndarray, probs: np.ndarray) -> float:
    m = compute_metrics(spec.task, labels, probs, class_names=list(spec.class_names),
                        positive_index=spec.positive_index)
    return float(m["auc"])


def export_bundle(run: Run | str | Path, out_dir: str | Path, *, onnx: bool = True, quantize: str | None = None,
                  torchscript: bool = False, checkpoint: str = "best", parity_tol: float = 1e-4,
                  n_parity: int = 64, n_calibration: int = 256, max_int8_auc_drop: float = 0.01) -> dict[str, Any]:
    """Export ``run`` to ``out_dir`` and return the bundle.json contents."""
    from ..evaluation.clinical import load_postprocess
    from .onnx import export_onnx, ort_logits, ort_session

    run = run if isinstance(run, Run) else load_run(run)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out} already exists and is not empty; choose another -o (bundles are never overwritten)")
    if quantize not in (None, "int8"):
        raise ModelError(f"--quantize supports 'int8', got {quantize!r}")
    if quantize and not onnx:
        raise ModelError("INT8 quantisation works on the ONNX model: use --format onnx")
    spec, pre = run.spec, run.preprocess_cfg
    model, ckpt_meta = run.build_model(checkpoint, device="cpu")
    post = load_postprocess(run.path) or {}
    notes = list(post.get("notes", []))
    if not post:
        notes.append("no postprocess.json: uncalibrated (T = 1) and threshold 0.5; run `medcls evaluate` first")
    fused = run.inputs is not None
    if fused and (quantize or torchscript):
        raise ModelError("fused (image + metadata/text) models export to safetensors and ONNX; INT8 and TorchScript "
                         "are for image-only models")
    data = load_data(run.config.data) if (onnx or torchscript) else None
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent if out.parent.exists() else None))
    try:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        checks: dict[str, Any] = {}
        if fused and (run.path / "text_encoder").is_dir():  # tokenizer files + encoder config
            shutil.copytree(run.path / "text_encoder", tmp / "text_encoder")
        if onnx or torchscript:
            x_val, idx_val = _tensors(run, data.val, n_parity)
            ex_val = _extras(run, data.val, idx_val)
            with torch.no_grad():
                p_torch = probabilities(model(x_val, **ex_val).numpy(), spec.task)
        if onnx:
            export_onnx(model, tmp / "model.onnx", in_chans=pre.in_chans, size=pre.size, extras=ex_val or None)
            p_onnx = probabilities(ort_logits(ort_session(tmp / "model.onnx"), x_val.numpy(),
                                              extras={k: v.numpy() for k, v in ex_val.items()}), spec.task)
            diff = float(np.abs(p_onnx - p_torch).max())
            checks["onnx_parity"] = {"max_abs_prob_diff": diff, "tolerance": parity_tol, "n_images": len(x_val),
                                     "images": "val split" + (" with their metadata/text" if fused else "")}
            if diff > parity_tol:
                raise ModelError(f"ONNX and torch disagree: max |p_onnx - p_torch| = {diff:.2e} > {parity_tol:g}")
        if quantize:
            from .quantize import quantize_static_int8

            x_cal, _ = _tensors(run, data.train, n_calibration)
            quantize_static_int8(tmp / "model.onnx", tmp / "model.int8.onnx", x_cal.numpy())
            x_all = torch.stack([run.preprocess(data.val.load(i)) for i in range(len(data.val))])
            y = np.asarray(data.val.labels)
            auc32 = _auc(spec, y, probabilities(ort_logits(ort_session(tmp / "model.onnx"), x_all.numpy()), spec.task))
            auc8 = _auc(spec, y, probabilities(ort_logits(ort_session(tmp / "model.int8.onnx"), x_all.numpy()), spec.task))
            checks["int8"] = {"calibration_images": len(x_cal), "calibration_split": "train", "val_auc_fp32": auc32,
                              "val_auc_int8": auc8, "auc_drop": auc32 - auc8, "max_auc_drop": max_int8_auc_drop,
                              "method": "static QDQ, per-channel QInt8 weights, QUInt8 activations"}
            if auc32 - auc8 > max_int8_auc_drop:
                raise ModelError(f"INT8 model loses {auc32 - auc8:.4f} validation AUC ({auc32:.4f} -> {auc8:.4f}), "
                                 f"more than the allowed {max_int8_auc_drop}; export without --quantize or raise "
                                 f"--max-int8-auc-drop")
        if torchscript:
            import warnings

            with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what many servers load
                warnings.simplefilter("ignore", FutureWarning)
                ts = torch.jit.trace(model, x_val[:2])
            ts.save(str(tmp / "model.ts"))
        info = {
            "format_version": FORMAT_VERSION, "medcls_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source_run": str(run.path),
            "checkpoint": {"which": checkpoint, "epoch": ckpt_meta.get("epoch")},
            "architecture": {"name": run.config.model.name, "stem": run.data_summary.get("stem", "default"),
                             "num_classes": spec.num_classes, "in_chans": pre.in_chans},
            "task": spec.task, "spec": spec.to_dict(), "class_names": list(spec.class_names),
            "positive_class": spec.class_names[spec.positive_index] if spec.positive_index is not None else None,
            "preprocess": {**pre.to_dict(), "modality_preset": run.config.transforms.preset,
                           "normalisation": "inside the model (mean/std buffers)", "input_range": [0.0, 1.0]},
            "temperature": float(post.get("temperature", 1.0)),
            "operating_point": {"selected": post.get("selected", "default"), "threshold": float(post.get("threshold", 0.5)),
                                "chosen_on": post.get("fitted_on", "none"),
                                **({"thresholds": post["thresholds"]} if "thresholds" in post else {})},
            "operating_points": post.get("operating_points"), "training_data": run.data_summary.get("splits"),
            "checks": checks, "notes": notes,
        }
        if fused:
            from ..multimodal import fusion_options

            info["architecture"]["fusion"] = fusion_options(run.config, run.inputs)
            info["inputs"] = {**run.data_summary["inputs"], **run.inputs.describe(),
                              "onnx_inputs": ["image", *run.inputs.names]}
        files = sorted(f for f in tmp.rglob("*") if f.is_file())
        info["files"] = {f.relative_to(tmp).as_posix(): {"sha256": _sha256(f), "bytes": f.stat().st_size}
                         for f in files}
        atomic_write_json(tmp / "bundle.json", info)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written to %s (%s)", out, ", ".join(info["files"]))
    return info


def load_bundle(path: str | Path, *, backend: str = "torch", device: torch.device | None = None,
                threads: int | None = None, verify: bool = True):
    """A :class:`~medcls.inference.Predictor` over a bundle; file hashes are checked first."""
    from ..inference import Predictor
    from ..models import create_model

    p = Path(path)
    try:
        info = json.loads((p / "bundle.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{p}/bundle.json is missing or unreadable: {e}") from None
    fname = {"torch": "model.safetensors", "onnx": "model.onnx", "int8": "model.int8.onnx"}[backend]
    if fname not in info.get("files", {}):
        raise RunError(f"bundle {p} has no {fname} for the {backend} backend (it has {sorted(info.get('files', {}))})")
    if verify and _sha256(p / fname) != info["files"][fname]["sha256"]:
        raise RunError(f"{p / fname} does not match the sha256 in bundle.json (modified or corrupt)")
    spec = DatasetSpec.from_dict(info["spec"])
    pre = PreprocessConfig.from_dict({k: v for k, v in info["preprocess"].items()
                                      if k in PreprocessConfig.__dataclass_fields__})
    op = info.get("operating_point", {})
    common = dict(spec=spec, preprocess=pre, temperature=info.get("temperature", 1.0),
                  threshold=op.get("threshold", 0.5), operating_point=op.get("selected", "default"),
                  thresholds=op.get("thresholds"), info={**info, "backend": backend, "path": str(p)})
    if info.get("inputs"):  # fused model: metadata/text encoding (and tokenizer) from the bundle
        from ..multimodal import InputEncoder

        common["inputs"] = InputEncoder.from_dict(info["inputs"], p)
    if backend == "torch":
        from safetensors.torch import load_file

        arch = info["architecture"]
        model = create_model(arch["name"], arch["num_classes"], in_chans=arch["in_chans"], stem=arch.get("stem", "default"))
        if arch.get("fusion"):
            from ..multimodal import TEXT_DIR, build_fused

            model = build_fused(model, arch["num_classes"], arch["fusion"], text_source=p / TEXT_DIR,
                                pretrained_text=False)
        model.load_state_dict(load_file(str(p / fname)))
        device = device or torch.device("cpu")
        return Predictor(model=model.to(device).eval(), device=device, **common)
    from .onnx import ort_session

    return Predictor(session=ort_session(p / fname, threads=threads), **common)
