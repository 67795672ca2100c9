"""Bundles: the trained artefact, exported: everything needed to serve a model, verified at export time.

``bundle/``::

    bundle.json          format and medcls version, source run and checkpoint, the ModelSpec (``model``:
                         architecture, classes, channels, stem, fusion, preprocessing, inputs), the
                         checkpoint's post-processing (``postprocess``: temperature, operating points,
                         what they were fitted on; ``calibrated``), training data summary, parity and
                         INT8 checks, notes, and the sha256 of every file
    model.safetensors    Classifier weights (normalisation included)
    model.onnx           fp32, dynamic batch (input ``image`` in [0, 1], output ``logits``; fused models
                         also take their named metadata/text inputs, listed in ``model.inputs``)
    text_encoder/        fused models with text: tokenizer files and the encoder's config.json
    model.int8.onnx      optional static INT8 (QDQ), calibrated on training images
    model.ts             optional TorchScript
    model_card.md        pruned bundles (``prune=``): what pruning did (ratio, parameters, val AUC before/after)

Pruned bundles (``export_bundle(run, out, prune=0.5)``, :mod:`medcls.export.prune`) hold the pruned,
fine-tuned weights; ``model.pruning`` in bundle.json rebuilds the architecture, ``pruning`` reports it.

It is read back by the same loader as a run (:func:`medcls.artefact.open_artefact`).
The bundle is assembled in a temporary folder and renamed into place, so it is
complete or absent; an existing folder is never overwritten.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..artefact import BUNDLE_FILE, ModelSpec, Postprocess, bundle_digest, open_artefact
from ..artefact.drift import DRIFT_FILE, predicted_index, save_reference
from ..artefact.ood import FEATURES, OOD_FILE, OodGate, fit_gate, has_features, logits_and_features
from ..data.sources import load_data
from ..errors import ConfigError, ModelError, RunError
from ..logs import Progress
from ..metrics import task_auc
from ..metrics.drift import fit_reference
from ..runs import Run, load_run
from ..utils import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_new_output,
    file_sha256,
    new_staging_dir,
    place_staged,
    to_json,
)

log = logging.getLogger("medcls")

FORMAT_VERSION = 3  # 3: bundle.json carries the sha256 of its own canonical form
RECALIBRATED_FORMAT = 4  # 4: its post-processing has a recalibration, which a reader of 3 would silently drop


def _even_rows(table, n: int) -> np.ndarray:
    """At most ``n`` row indices of ``table``, evenly spaced (every class of a sorted table is reached)."""
    return np.linspace(0, len(table) - 1, min(n, len(table))).astype(int)


def _tensors(run: Run, table, n: int) -> tuple[torch.Tensor, np.ndarray]:
    idx = _even_rows(table, n)
    pre = run.preprocess
    return torch.stack([pre(table.load(int(i), draft=pre.draft)) for i in idx]), idx


def _side_inputs(run: Run, table, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """The metadata/text inputs of rows ``idx`` of ``table`` for a fused run (``{}`` for image-only)."""
    if run.inputs is None:
        return {}
    return run.inputs.encode_table(table.subset(idx), "val split")


def _check_request(out: Path, onnx: bool, quantize: str | None, torchscript: bool, fused: bool) -> None:
    check_new_output(out, "bundles", empty_dir_ok=True)
    if quantize not in (None, "int8"):
        raise ModelError(f"--quantize supports 'int8', got {quantize!r}")
    if quantize and not onnx:
        raise ModelError("INT8 quantisation works on the ONNX model: use --format onnx")
    if fused and (quantize or torchscript):
        raise ModelError("fused (image + metadata/text) models export to safetensors and ONNX; INT8 and TorchScript "
                         "are for image-only models")


def _postprocess(run: Run, checkpoint: str) -> tuple[Postprocess, list[str]]:
    post = run.postprocess(checkpoint)
    if post is not None:
        return post, list(post.notes)
    note = (f"UNCALIBRATED: checkpoint {checkpoint!r} has no calibration fitted on val, so this bundle uses T = 1 "
            f"and threshold 0.5; run `medcls calibrate {run.path} --checkpoint {checkpoint}` and export again")
    log.warning("%s", note)
    return Postprocess.uncalibrated(note), [note]


def _recalibrated(run: Run, checkpoint: str, source: str | Path) -> tuple[Postprocess, list[str], dict[str, Any]]:
    """The recalibrated post-processing ``medcls validate --recalibrate`` stored in ``source`` (its folder or its
    postprocess.json) for this very checkpoint, the notes that say so, and the validation it came from."""
    from ..artefact import POSTPROCESS_FILE, read_postprocess

    src = Path(source)
    folder = src if src.is_dir() else src.parent
    if not (folder / POSTPROCESS_FILE).is_file():
        raise RunError(f"--recalibration {src}: no {POSTPROCESS_FILE} there (write one with `medcls validate RUN "
                       "SOURCE --recalibrate logistic`)")
    post = read_postprocess(folder, checkpoint, run.checkpoint_path(checkpoint))
    if post is None or post.recalibration is None:
        raise RunError(f"--recalibration {folder / POSTPROCESS_FILE} holds no recalibration of {run.path.name}'s "
                       f"{checkpoint} checkpoint as it is now (another checkpoint, another version of it, or no "
                       "recalibration)")
    metrics = folder / "metrics.json"
    validation = json.loads(metrics.read_text()) if metrics.is_file() else {}
    log.warning("exporting a RECALIBRATED model: %s", post.notes[-1] if post.notes else post.recalibration)
    return post, list(post.notes), validation


def _onnx_parity(run: Run, model, tmp: Path, x_val, ex_val, p_torch, tol: float, gate: OodGate | None,
                 f_torch: np.ndarray | None) -> dict[str, Any]:
    from ..engine.predict import probabilities
    from ..inference.ort import OUTPUT, ort_outputs, ort_session
    from .onnx import export_onnx

    pre, task = run.preprocess_cfg, run.dataset.task
    export_onnx(model, tmp / "model.onnx", in_chans=pre.in_chans, size=pre.size, side_inputs=ex_val or None,
                features=gate is not None)
    outs = ort_outputs(ort_session(tmp / "model.onnx"), x_val.numpy(), [OUTPUT, *([FEATURES] if gate else [])],
                       side_inputs={k: v.numpy() for k, v in ex_val.items()})
    p_onnx = probabilities(outs[0], task)
    diff = float(np.abs(p_onnx - p_torch).max())
    if diff > tol:
        raise ModelError(f"ONNX and torch disagree: max |p_onnx - p_torch| = {diff:.2e} > {tol:g}")
    out = {"max_abs_prob_diff": diff, "tolerance": tol, "n_images": len(x_val),
           "images": "val split" + (" with their metadata/text" if ex_val else "")}
    if gate is not None:  # the gate must flag the same images whichever runtime computes its features
        s_torch = gate.score(f_torch)
        rel = float(np.max(np.abs(gate.score(outs[1]) - s_torch) / np.maximum(s_torch, 1e-6)))
        if rel > 1e-3:
            raise ModelError(f"ONNX and torch disagree on the out-of-distribution score: max relative diff {rel:.2e}")
        out["max_rel_ood_score_diff"] = rel
    return out


OOD_FIT_IMAGES = 5000  # per split: enough for a shrunk covariance of 2048 features, seconds to compute


def _features(run: Run, model, table, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Penultimate features, logits and labels of up to ``OOD_FIT_IMAGES`` images of ``table``, evenly spaced."""
    idx = _even_rows(table, OOD_FIT_IMAGES)
    pre, feats, logits = run.preprocess, [], []
    progress = Progress(f"out-of-distribution gate: features of {split} images", len(idx))
    with torch.no_grad():
        for lo in range(0, len(idx), 256):
            x = torch.stack([pre(table.load(int(i), draft=pre.draft)) for i in idx[lo : lo + 256]])
            z, f = logits_and_features(model, x)
            feats.append(f.numpy())
            logits.append(z.float().numpy())
            progress.update(len(x))
    progress.close()
    return np.concatenate(feats), np.concatenate(logits), np.asarray(table.labels)[idx]


def _fit_ood(run: Run, model, data, tmp: Path, post: Postprocess) -> tuple[OodGate | None, dict[str, Any] | None]:
    """The out-of-distribution gate, fitted on train with its threshold on val, and the drift reference (how
    val looked to the model: :mod:`medcls.metrics.drift`) beside it (image-only models)."""
    if run.inputs is not None or not has_features(model):
        return None, None
    f_train, _, y_train = _features(run, model, data.train, "train")
    f_val, z_val, _ = _features(run, model, data.val, "val")
    gate, info = fit_gate(f_train, y_train, f_val, run.dataset.task)
    gate.save(tmp / OOD_FILE)
    log.info("out-of-distribution gate: Mahalanobis distance of %d features, threshold %.3g accepts %.1f%% of val",
             info["features"], gate.threshold, 100 * info["val_accept"])
    names = list(run.dataset.class_names)
    probs = post.probabilities(z_val, run.dataset.task)
    ref = fit_reference(f_train, f_val, gate.score(f_val), predicted_index(probs, partial(post.decide,
                        spec=run.dataset), names), gate.threshold, names)
    save_reference(ref, tmp / DRIFT_FILE)
    info["drift_reference"] = {"val_images": len(ref.scores), "components": int(ref.components.shape[0])}
    return gate, info


def _int8(run: Run, data, tmp: Path, n_calibration: int, max_drop: float) -> dict[str, Any]:
    from ..engine.predict import probabilities
    from ..inference.ort import ort_logits, ort_session
    from .quantize import quantize_static_int8

    spec = run.dataset
    x_cal, _ = _tensors(run, data.train, n_calibration)
    step = Progress("INT8: static quantisation calibrated on train images", len(x_cal))
    quantize_static_int8(tmp / "model.onnx", tmp / "model.int8.onnx", x_cal.numpy())
    step.close()
    pre = run.preprocess
    step = Progress("INT8: validation AUC, fp32 against int8", len(data.val))
    x_all = torch.stack([pre(data.val.load(i, draft=pre.draft)) for i in range(len(data.val))]).numpy()
    y = np.asarray(data.val.labels)
    auc = partial(task_auc, spec.task, y, class_names=spec.class_names, positive_index=spec.positive_index)
    auc32 = auc(probabilities(ort_logits(ort_session(tmp / "model.onnx"), x_all), spec.task))
    auc8 = auc(probabilities(ort_logits(ort_session(tmp / "model.int8.onnx"), x_all), spec.task))
    step.close()
    if auc32 - auc8 > max_drop:
        raise ModelError(f"INT8 model loses {auc32 - auc8:.4f} validation AUC ({auc32:.4f} -> {auc8:.4f}), "
                         f"more than the allowed {max_drop}; export without --quantize or raise --max-int8-auc-drop")
    return {"calibration_images": len(x_cal), "calibration_split": "train", "val_auc_fp32": auc32,
            "val_auc_int8": auc8, "auc_drop": auc32 - auc8, "max_auc_drop": max_drop,
            "method": "static QDQ, per-channel QInt8 weights, QUInt8 activations"}


def _torchscript(model, x: torch.Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what many servers load
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(model, x[:2]).save(str(path))


def _write_files(run: Run, model, tmp: Path, post: Postprocess, *, onnx: bool, quantize: str | None, torchscript: bool,
                 parity_tol: float, n_parity: int, n_calibration: int, max_int8_auc_drop: float,
                 data=None) -> dict[str, Any]:
    """Weights, ONNX (parity-checked), INT8 and TorchScript into ``tmp``; returns the checks."""
    from safetensors.torch import save

    from ..engine.predict import probabilities

    # (safetensors' save_file creates the file 0600; the atomic writer follows the umask)
    atomic_write_bytes(tmp / "model.safetensors", save({k: v.contiguous() for k, v in model.state_dict().items()}))
    if run.model_spec.uses_text:  # tokenizer files + encoder config
        shutil.copytree(run.artefact.text_dir, tmp / run.artefact.text_dir.name)
    checks: dict[str, Any] = {}
    data = data if data is not None else load_data(run.config.data)
    gate, ood = _fit_ood(run, model, data, tmp, post)
    if ood is not None:
        checks["ood"] = ood
    if not (onnx or torchscript):
        return checks
    x_val, idx_val = _tensors(run, data.val, n_parity)
    ex_val = _side_inputs(run, data.val, idx_val)
    with torch.no_grad():  # with a gate, one forward pass gives the logits and the features it scores
        logits, f_val = ((t.numpy() for t in logits_and_features(model, x_val)) if gate is not None
                         else (model(x_val, **ex_val).numpy(), None))
    p_torch = probabilities(logits, run.dataset.task)
    if onnx:
        step = Progress("ONNX: export and parity with torch on val images", len(x_val))
        checks["onnx_parity"] = _onnx_parity(run, model, tmp, x_val, ex_val, p_torch, parity_tol, gate, f_val)
        step.close()
    if quantize:
        checks["int8"] = _int8(run, data, tmp, n_calibration, max_int8_auc_drop)
    if torchscript:
        _torchscript(model, x_val, tmp / "model.ts")
    return checks


def _describe(run: Run, spec: ModelSpec, checkpoint: str, epoch, post: Postprocess, checks: dict, notes: list[str],
              tmp: Path, pruning: dict[str, Any] | None = None) -> dict[str, Any]:
    files = sorted(f for f in tmp.rglob("*") if f.is_file())
    info = {
        "format_version": RECALIBRATED_FORMAT if post.recalibration else FORMAT_VERSION,
        "medcls_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {"run": run.path.name, "checkpoint": checkpoint, "epoch": epoch},
        "model": spec.to_dict(), "postprocess": post.to_dict(), "calibrated": post.fitted,
        "training_data": run.data_summary.get("splits"), "checks": checks, "notes": notes,
        "onnx_inputs": ["image", *run.inputs.names] if run.inputs is not None else ["image"],
        "files": {f.relative_to(tmp).as_posix(): {"sha256": file_sha256(f), "bytes": f.stat().st_size}
                  for f in files},
        **({"pruning": pruning} if pruning is not None else {}),
        **({"recalibrated": {k: v for k, v in post.recalibration.items() if k != "positive_index"}}
           if post.recalibration else {}),
    }
    info = json.loads(to_json(info))  # plain JSON values, exactly as the file will hold them
    return {**info, "integrity": {"sha256": bundle_digest(info), "of": "bundle.json in canonical form "
                                  "(sorted keys, no whitespace, without this field)"}}


def _prune(run: Run, model, checkpoint: str, epoch, ratio: float, epochs: int):
    """The pruned model (with its spec, re-fitted post-processing and report), the data, the model card text."""
    from ..reports.model_card import pruned_card
    from .prune import prune_for_export

    data = load_data(run.config.data)
    pruned = prune_for_export(run, model, data, ratio=ratio, epochs=epochs, checkpoint=checkpoint, epoch=epoch)
    return pruned, data, pruned_card(run, checkpoint, pruned.report)


def _source(run: Run | str | Path, prune: float | None, prune_epochs: int) -> Run:
    """The run to export; asked to prune a bundle that is pruned already, say that rather than "not a run"."""
    if isinstance(run, Run):
        return run
    if prune is not None:
        art = open_artefact(run)
        if art.kind == "bundle":
            from .prune import check_prune_request

            check_prune_request(art.spec, prune, prune_epochs)
    return load_run(run)


def export_bundle(run: Run | str | Path, out_dir: str | Path, *, onnx: bool = True, quantize: str | None = None,
                  torchscript: bool = False, checkpoint: str = "best", parity_tol: float = 1e-4,
                  n_parity: int = 64, n_calibration: int = 256, max_int8_auc_drop: float = 0.01,
                  prune: float | None = None, prune_epochs: int = 3,
                  recalibration: str | Path | None = None) -> dict[str, Any]:
    """Export ``run``'s ``checkpoint`` with its calibration to ``out_dir``; returns the bundle.json contents.

    ``prune``: first remove that fraction of the channels, fine-tune ``prune_epochs`` epochs on the run's
    training split and re-fit the calibration on val (:mod:`medcls.export.prune`). ``recalibration``: a
    ``validate-<name>/`` folder of ``medcls validate --recalibrate``: its post-processing entry replaces the run's,
    and bundle.json (``recalibrated``, notes) and the bundle's model card say so.
    """
    if recalibration is not None and prune is not None:
        raise ConfigError("--recalibration was fitted for the unpruned model: export it without --prune")
    run = _source(run, prune, prune_epochs)
    out = Path(out_dir)
    _check_request(out, onnx, quantize, torchscript, run.inputs is not None)
    if prune is not None:
        from .prune import check_prune_request

        check_prune_request(run.model_spec, prune, prune_epochs)
    model, meta = run.build_model(checkpoint, device="cpu")
    spec, data, report, card = run.model_spec, None, None, None
    if recalibration is not None:
        from ..reports.model_card import recalibrated_card

        post, notes, validation = _recalibrated(run, checkpoint, recalibration)
        card = recalibrated_card(run, checkpoint, post, validation)
    elif prune is None:
        post, notes = _postprocess(run, checkpoint)
    else:  # the run's calibration belongs to the unpruned model: re-fitted on val
        pruned, data, card = _prune(run, model, checkpoint, meta.get("epoch"), prune, prune_epochs)
        model, spec, post, report = pruned.model, pruned.spec, pruned.postprocess, pruned.report
        notes = list(post.notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in sorted(out.parent.glob(".bundle-*")):
        log.warning("ignoring %s: the staging folder of an interrupted (or running) export; delete it if no "
                    "export is running", old)
    tmp = new_staging_dir(out.parent, ".bundle-")  # same filesystem as out: the final rename is atomic
    try:
        checks = _write_files(run, model, tmp, post, onnx=onnx, quantize=quantize, torchscript=torchscript,
                              parity_tol=parity_tol, n_parity=n_parity, n_calibration=n_calibration,
                              max_int8_auc_drop=max_int8_auc_drop, data=data)
        if card:
            atomic_write_text(tmp / "model_card.md", card)
        info = _describe(run, spec, checkpoint, meta.get("epoch"), post, checks, notes, tmp, report)
        atomic_write_json(tmp / BUNDLE_FILE, info)
        place_staged(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written to %s (%s)", out, ", ".join(info["files"]))
    return info
