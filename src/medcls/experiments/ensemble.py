"""``medcls ensemble``: several trained runs (seeds, architectures, CV folds) as ONE run-like artefact.

The result is a run directory like any other (``config.yaml``, ``model.json``, ``data.json``,
``checkpoints/best.safetensors``, ``postprocess.json``, ``ensemble.json``), so ``medcls evaluate``
(CIs, report, model card), ``explain``, ``export`` (one ONNX graph, INT8), ``predict`` and ``serve`` take
it unchanged. Its model (:class:`~medcls.models.ensemble.Ensemble`) averages the members' calibrated
probabilities (each member's own temperature), with equal weights or weights fitted on val
(``weights="val"``: minimum validation log-loss of the mixture). The ensemble's own temperature and
operating points are then fitted on val like a single run's.

:func:`train_ensemble` is the budgeted recipe: K members of one config with seeds ``seed .. seed+K-1``,
trained one after another until K are done or the next one would not finish within the budget.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..api import evaluate, train
from ..artefact import MODEL_FILE, ModelSpec
from ..calibration import calibrate_run, split_logits
from ..data.sources import load_data
from ..engine.checkpoint import save_checkpoint, with_prefix
from ..engine.trainer import resolve_device
from ..errors import ConfigError, ModelError, RunError
from ..metrics import negative_log_likelihood, task_auc
from ..models.ensemble import Ensemble
from ..runs import LEAKAGE_FILE, Run, environment, load_run
from ..utils import atomic_write_json, atomic_write_text, check_new_output, new_staging_dir, place_staged
from ._common import as_config
from .space import parse_budget

log = logging.getLogger("medcls")

ENSEMBLE_FILE = "ensemble.json"
WEIGHTINGS = ("equal", "val")


@dataclass
class EnsembleResult:
    """The ensemble's run directory (loaded), what each member contributed, and the test metrics if evaluated."""

    run: Run
    members: list[dict[str, Any]]
    val: dict[str, float]
    test: dict[str, Any] | None = None


# ------------------------------------------------------------------ members must agree
def _differs(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    keys = sorted(set(a) | set(b))
    return next((k for k in keys if a.get(k) != b.get(k)), None)


def _positive(spec) -> str | None:
    return spec.class_names[spec.positive_index] if spec.positive_index is not None else None


def check_members(runs: Sequence[Run]) -> None:
    """One line naming what differs when the members cannot form one model: task, classes, positive class,
    preprocessing (size, channels, CLAHE, stain), or a member that is fused or an ensemble itself."""
    if len(runs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(runs)}")
    for r in runs:
        if r.model_spec.fused:
            raise ModelError(f"{r.path} is a fused (image + metadata/text) model; ensembles are of image-only runs")
        if r.model_spec.ensemble is not None:
            raise ModelError(f"{r.path} is an ensemble already; list its member runs instead")
    seen = [r.path.resolve() for r in runs]
    twice = next((p for p in seen if seen.count(p) > 1), None)
    if twice is not None:
        raise ConfigError(f"run {twice} is listed twice; an ensemble's members are different runs")
    first = runs[0]
    for r in runs[1:]:
        a, b = first.dataset, r.dataset
        for what, x, y in (("task", a.task, b.task), ("classes", list(a.class_names), list(b.class_names)),
                           ("positive class", _positive(a), _positive(b))):
            if x != y:
                raise ModelError(f"ensemble members differ in {what}: {first.path} has {x!r}, {r.path} has {y!r}")
        key = _differs(first.preprocess_cfg.to_dict(), r.preprocess_cfg.to_dict())
        if key is not None:
            raise ModelError(f"ensemble members differ in preprocessing ({key}): {first.path} has "
                             f"{first.preprocess_cfg.to_dict().get(key)!r}, {r.path} has "
                             f"{r.preprocess_cfg.to_dict().get(key)!r}; members must see the same tensors")
    sources = {json.dumps(r.data_summary.get("splits"), sort_keys=True) for r in runs}
    if len(sources) > 1:
        log.warning("the members were trained on different splits (CV folds?): the ensemble is calibrated and "
                    "weighted on %s's val split, part of which other members trained on, so val figures are "
                    "optimistic; judge it on test", first.path)


# ------------------------------------------------------------------ weights on val
def _log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    """The metrics' NLL of a mixture (a weighted mean can exceed 1 by a rounding error: clipped first)."""
    return negative_log_likelihood(labels, np.clip(p, 0.0, 1.0))


def fit_weights(labels: np.ndarray, member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mixture weights (on the simplex) minimising the validation log-loss of the weighted mean probability."""
    from scipy.optimize import minimize
    from scipy.special import softmax

    stack = np.stack(member_probs)  # (M, N, K)

    def loss(z: np.ndarray) -> float:
        return _log_loss(labels, np.tensordot(softmax(z), stack, axes=1))

    res = minimize(loss, np.zeros(len(stack)), method="L-BFGS-B")
    w = softmax(res.x)
    if w.max() > 0.9:
        log.warning("the weights fitted on val put %.2f on one member, so the ensemble is nearly that member alone "
                    "(a small or easily separated val split favours one); equal weights usually generalise better",
                    w.max())
    return w


# ------------------------------------------------------------------ the run-like directory
def _spec(runs: Sequence[Run], temperatures: list[float], weights: list[float], weighting: str) -> ModelSpec:
    first = runs[0].model_spec
    archs = [r.model_spec.architecture for r in runs]
    return first.with_(architecture=f"ensemble({'+'.join(archs)})", pruning=None, stem="default", drop_rate=0.0,
                       ensemble={"combine": "weighted mean of calibrated probabilities", "weighting": weighting,
                                 "members": [r.model_spec.to_dict() for r in runs],
                                 "temperatures": temperatures, "weights": weights,
                                 "sources": [str(r.path.resolve()) for r in runs]})


def _write_dir(tmp: Path, runs: Sequence[Run], spec: ModelSpec, model: Ensemble, info: dict[str, Any]) -> None:
    first = runs[0]
    cfg = first.config.model_copy(update={"name": info["name"]}).to_dict()
    atomic_write_text(tmp / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    atomic_write_json(tmp / MODEL_FILE, spec.to_dict())
    atomic_write_json(tmp / "data.json", {**first.data_summary, "ensemble_of": info["sources"]})
    atomic_write_json(tmp / "env.json", environment("cpu"))
    atomic_write_json(tmp / ENSEMBLE_FILE, info)
    (tmp / "checkpoints").mkdir()
    save_checkpoint(tmp / "checkpoints" / "best.safetensors", with_prefix(model.state_dict(), "model/"),
                    {"epoch": None, "ensemble_of": info["sources"]})
    if (first.path / LEAKAGE_FILE).is_file():  # the ensemble is calibrated and evaluated on the first member's splits
        shutil.copy2(first.path / LEAKAGE_FILE, tmp / LEAKAGE_FILE)


def build_ensemble(runs: Sequence[Run | str | Path], out: str | Path, *, weights: str = "equal",
                   name: str | None = None, device: str = "auto", evaluate_split: str | None = "test"
                   ) -> EnsembleResult:
    """Combine the ``best`` checkpoints of ``runs`` into a run-like directory ``out`` (must not exist), calibrate
    it on val and (``evaluate_split``) evaluate it with CIs, report and model card like any run."""
    if weights not in WEIGHTINGS:
        raise ConfigError(f"--weights must be one of {', '.join(WEIGHTINGS)}, got {weights!r}")
    out = Path(out)
    check_new_output(out, "runs", empty_dir_ok=True)
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    check_members(runs)
    dev, task = resolve_device(device), runs[0].dataset.task
    data = load_data(runs[0].config.data)
    labels = np.asarray(data.val.labels)
    models = [r.build_model("best", device=str(dev))[0] for r in runs]
    logits = [split_logits(r, m, data.val, dev, where="val split") for r, m in zip(runs, models, strict=True)]
    posts = [r.artefact.postprocess_or_default("best") for r in runs]
    probs = [post.probabilities(z, task) for post, z in zip(posts, logits, strict=True)]
    temps = [post.temperature for post in posts]
    w = fit_weights(labels, probs) if weights == "val" else np.full(len(runs), 1 / len(runs))
    model = Ensemble([m.cpu() for m in models], task, temps, w.tolist())
    with torch.no_grad():  # the ensemble's val logits from its members': calibrated without another pass over val
        val_logits = model.combine([torch.from_numpy(z) for z in logits]).numpy()
    spec = _spec(runs, temps, [float(x) for x in w], weights)
    s = runs[0].dataset
    auc = partial(task_auc, task, labels, class_names=s.class_names, positive_index=s.positive_index)
    members = [{"run": str(r.path.resolve()), "architecture": r.model_spec.architecture, "seed": r.config.seed,
                "temperature": t, "weight": float(wi), "val_auc": auc(p)}
               for r, t, wi, p in zip(runs, temps, w, probs, strict=True)]
    mixed = np.tensordot(w, np.stack(probs), axes=1)
    val = {"auc": auc(mixed), "log_loss": _log_loss(labels, mixed)}
    info = {"name": name or out.name, "sources": [m["run"] for m in members], "weighting": weights,
            "members": members, "val": val}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_staging_dir(out.parent, ".ensemble-")
    try:
        _write_dir(tmp, runs, spec, model, info)
        place_staged(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run = load_run(out)
    calibrate_run(run, "best", data=data, device=dev, val_logits=val_logits)
    log.info("ensemble of %d runs written to %s: val AUC %.4f (members %s)", len(runs), out, val["auc"],
             ", ".join(f"{m['val_auc']:.4f}" for m in members))
    test = evaluate(run, evaluate_split, data=data, device=str(dev)) if evaluate_split else None
    return EnsembleResult(run, members, val, test)


# ------------------------------------------------------------------ the budgeted recipe
def train_ensemble(config: Any, out: str | Path, *, members: int = 3, budget: str | float | None = None,
                   overrides: Sequence[str] | None = None, weights: str = "equal",
                   evaluate_split: str | None = "test") -> EnsembleResult:
    """Train up to ``members`` runs of ``config`` (seeds ``seed``, ``seed+1``, ...) under ``out/members/`` and
    combine them into the ensemble at ``out``. With ``budget`` (wall clock: ``30m``, ``2h``) no member starts
    unless the mean time of those before it says it ends within the budget; at least 2 must finish."""
    if not isinstance(members, int) or members < 2:
        raise ConfigError(f"--members must be a whole number >= 2, got {members!r}")
    if weights not in WEIGHTINGS:
        raise ConfigError(f"--weights must be one of {', '.join(WEIGHTINGS)}, got {weights!r}")
    seconds = parse_budget(budget)
    out = Path(out)
    check_new_output(out, "runs", empty_dir_ok=True)
    cfg = as_config(config, overrides)
    home = out.parent / f".{out.name}-members"  # moved under out/ once the ensemble is written
    check_new_output(home, None, hint="remove it (left by an interrupted `medcls ensemble`?) or choose another -o")
    start, done, took = time.monotonic(), [], []
    for i in range(members):
        elapsed = time.monotonic() - start
        if seconds is not None and took and elapsed + float(np.mean(took)) > seconds:
            log.warning("budget: member %d would end after %.0f s of the %.0f s budget; stopping at %d members",
                        i + 1, elapsed + float(np.mean(took)), seconds, len(done))
            break
        t0 = time.monotonic()
        seed_cfg = cfg.model_copy(update={"seed": cfg.seed + i, "name": f"{cfg.name}-seed{cfg.seed + i}"})
        done.append(train(seed_cfg, run_dir=home / f"seed-{cfg.seed + i}"))
        took.append(time.monotonic() - t0)
        log.info("ensemble member %d/%d (seed %d) trained in %.0f s", i + 1, members, cfg.seed + i, took[-1])
    if len(done) < 2:
        raise RunError(f"the budget of {budget} allowed only {len(done)} member ({took[0]:.0f} s each, kept in "
                       f"{home}); give a larger --budget, fewer epochs or a smaller model")
    result = build_ensemble(done, out, weights=weights, name=cfg.name + "-ensemble", evaluate_split=None)
    home.rename(out / "members")
    _repoint(out, home)
    run = load_run(out)
    test = evaluate(run, evaluate_split) if evaluate_split else None
    return EnsembleResult(run, json.loads((out / ENSEMBLE_FILE).read_text())["members"], result.val, test)


def _repoint(out: Path, home: Path) -> None:
    """Member paths in ensemble.json / model.json / data.json now under ``out/members``."""
    old, new = str(home.resolve()), str((out / "members").resolve())
    for name in (ENSEMBLE_FILE, MODEL_FILE, "data.json"):
        p = out / name
        atomic_write_text(p, p.read_text().replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))

