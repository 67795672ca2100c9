"""``medcls validate``: how a trained model holds on a labelled source it never saw (another site, scanner or
period), through the same Predictor as ``medcls predict`` (the model's preprocessing, temperature and operating
point), beside the run's internal test figures. Writes ``validate-<name>/`` (never overwritten)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..artefact import Artefact, open_artefact
from ..errors import ConfigError, DataError
from ..inference import Predictor
from ..metrics.external import difference
from .casemix import development_prevalence, ood_shift, prevalence, stats_summary
from .figures import bootstrapped, external_block, per_site, sample_size_check, stat_for
from .labels import read_label_map
from .observe import External, Observed, image_stats, load_external, observe

log = logging.getLogger("medcls")

DEV_STATS_IMAGES = 300


@dataclass
class Validation:
    """What ``validate`` found: ``metrics`` (metrics.json), ``frame`` (predictions.csv), ``postprocess`` (the
    recalibrated post-processing entry, when asked for), ``out`` (the folder written, if any)."""

    metrics: dict[str, Any]
    frame: pd.DataFrame
    postprocess: dict[str, Any] | None = None
    out: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]


def _development_splits(art: Artefact) -> dict[str, Any] | None:
    if art.kind == "bundle":
        return art.info.get("training_data")
    p = art.path / "data.json"
    return json.loads(p.read_text()).get("splits") if p.is_file() else None


def _development_stats(art: Artefact) -> dict[str, Any] | None:
    """Image statistics of (up to 300 evenly spaced) development test images: runs whose data is here."""
    if art.kind != "run":
        return None
    from ..data.sources import load_data
    from ..runs import load_run

    try:
        table = load_data(load_run(art.path).config.data).test
    except (DataError, ConfigError, OSError) as e:
        log.info("development image statistics unavailable: %s", e)
        return None
    rows = np.unique(np.linspace(0, len(table) - 1, min(len(table), DEV_STATS_IMAGES)).astype(int))
    return stats_summary(np.stack([image_stats(table.load(int(i))) for i in rows]))


def _internal_checkpoint(folder: Path) -> str | None:
    p = folder / "metrics.json"
    try:
        return json.loads(p.read_text()).get("checkpoint") if p.is_file() else None
    except (OSError, ValueError):
        return None


def _internal(art: Artefact, internal: str | Path | None, stat, n_resamples: int, seed: int,
              checkpoint: str = "best") -> tuple[dict[str, Any] | None, str]:
    """Bootstrapped figures of the run's own test predictions (``RUN/eval-test``, or ``internal``) of the same
    checkpoint; None and the reason when there are none."""
    from ..evaluation import read_predictions

    folder = Path(internal) if internal is not None else (art.path / "eval-test" if art.kind == "run" else None)
    if folder is None:
        return None, "a bundle carries no test predictions: give the run's evaluation with --internal RUN/eval-test"
    if not (folder / "predictions.csv").is_file():
        return None, f"no internal test predictions at {folder / 'predictions.csv'}: run `medcls evaluate` first"
    seen = _internal_checkpoint(folder)
    if seen is not None and seen != checkpoint:
        return None, (f"no internal figures: {folder} evaluated the {seen!r} checkpoint, this validation the "
                      f"{checkpoint!r} one")
    spec = art.spec.dataset
    res = read_predictions(folder / "predictions.csv", class_names=spec.class_names, task=spec.task,
                           positive_index=spec.positive_index)
    boot = bootstrapped(stat, res.labels, res.probs, n_resamples, seed + 1)  # independent of the external draws
    pos = spec.positive_index
    boot["n"], boot["events"] = len(res.labels), int((res.labels == pos).sum()) if pos is not None else None
    return boot, str(folder)


def _model_block(art: Artefact, pred: Predictor, checkpoint: str) -> dict[str, Any]:
    spec, post = art.spec.dataset, pred.postprocess
    return {"path": str(art.path), "kind": art.kind, "checkpoint": art.checkpoint_name(checkpoint),
            "architecture": art.spec.architecture, "backend": pred.backend, "classes": list(spec.class_names),
            "positive_class": None if spec.positive_index is None else spec.class_names[spec.positive_index],
            "temperature": post.temperature,
            "operating_point": post.selected, "threshold": post.threshold, "calibrated_on": post.fitted_on}


def _source_block(ext: External, obs: Observed, split: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"source": ext.source, "name": ext.spec.name, "split": split, "options": options,
            "site_labels": list(ext.spec.class_names), "label_mapping": ext.match.mapping, "n_source": ext.n_source,
            "n_dropped": ext.n_source - len(ext.inputs), "n_unreadable": len(obs.errors),
            "unreadable": obs.errors[:20], "n": len(obs.rows)}


def check_site_column(ext: External, site_column: str | None) -> None:
    """The site column must be one of the source's metadata columns (checked before any image is read)."""
    if site_column is not None and (ext.meta is None or site_column not in ext.meta.columns):
        from ..errors import did_you_mean

        cols = [] if ext.meta is None else list(map(str, ext.meta.columns))
        raise DataError(f"--site-column {site_column!r}: {ext.source} has no such column."
                        f"{did_you_mean(site_column, cols)} Columns: {', '.join(cols) or 'none'}")


def _sites(ext: External, obs: Observed, site_column: str | None) -> np.ndarray | None:
    if site_column is None:
        return None
    check_site_column(ext, site_column)
    return ext.meta[site_column].astype(str).to_numpy()[obs.rows]


def _frame(ext: External, obs: Observed, probs: np.ndarray, names: list[str], pos: int | None, post,
           sites: np.ndarray | None, gate) -> pd.DataFrame:
    """predictions.csv: the evaluation's columns (the decision at the stored operating point, or the arg-max),
    the site's own label, the site, the OOD score."""
    from ..evaluation import EvalResult

    ids = [ext.inputs.ids[i] for i in obs.rows]
    task = "binary" if pos is not None else "multiclass"
    res = EvalResult({}, ids, ext.labels[obs.rows], probs, tuple(names), task, pos, 0.5, post.threshold)
    df = res.frame()
    df = df.drop(columns=["predicted", "correct"]) if task == "binary" else \
        df.drop(columns=["correct"]).rename(columns={"predicted": "decision"})
    df.insert(2, "site_label", [ext.site_labels[i] for i in obs.rows])
    if sites is not None:
        df.insert(1, "site", sites)
    if obs.ood_scores is not None and gate is not None:
        df["ood_score"], df["ood_flagged"] = obs.ood_scores, obs.ood_scores > gate.threshold
    return df


def _case_mix(art: Artefact, pred: Predictor, ext: External, obs: Observed, probs: np.ndarray, seed: int) -> dict:
    names = list(art.spec.dataset.class_names)
    counts = np.bincount(ext.labels[obs.rows], minlength=len(names))
    predicted = np.asarray([names.index(d) for d in (pred.decide(p) for p in probs)], np.int64)
    return {"prevalence_here": prevalence(counts, names), "counts_here": dict(zip(names, counts.tolist(), strict=True)),
            "prevalence_development": development_prevalence(_development_splits(art), names),
            "images_here": stats_summary(obs.stats), "images_development": _development_stats(art),
            "native_size_development": art.spec.dataset.native_size,
            "ood": ood_shift(obs.ood_scores, obs.features, predicted, pred.ood, art.drift, seed=seed)}


def default_name(ext_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", ext_name).strip("-.") or "external"


def _options(label_map, recalibrate: str | None, fit_fraction: float, n_bootstrap: int) -> dict | None:
    if recalibrate is not None:
        from ..metrics.external import RECALIBRATIONS

        if recalibrate not in RECALIBRATIONS:
            from ..errors import did_you_mean

            raise ConfigError(f"--recalibrate must be one of {', '.join(RECALIBRATIONS)}, got {recalibrate!r}."
                              f"{did_you_mean(recalibrate, RECALIBRATIONS)}")
        if not 0 < fit_fraction < 1:
            raise ConfigError(f"--fit-fraction must be strictly between 0 and 1, got {fit_fraction}")
    if n_bootstrap < 10:
        raise ConfigError(f"--n-bootstrap must be at least 10, got {n_bootstrap}")
    return read_label_map(label_map) if isinstance(label_map, str | Path) else label_map


def _run_model(model, source: str, *, mapping, site_column, split, options, data_dir, checkpoint, backend, device,
               batch_size, num_workers) -> tuple[Artefact, Predictor, External, Observed]:
    """The artefact, its Predictor, the source's matched cases and what the model made of them."""
    art = open_artefact(model)
    if art.spec.dataset.task == "multilabel":
        raise ConfigError(f"{art.path} is a multi-label model: external validation takes one class per case")
    pred = Predictor.load(model, backend=backend, checkpoint=checkpoint, device=device)
    ext = load_external(source, list(art.spec.dataset.class_names), options=options, split=split, label_map=mapping,
                        data_dir=data_dir)
    check_site_column(ext, site_column)
    return art, pred, ext, observe(pred, ext.inputs, batch_size=batch_size, num_workers=num_workers)


def _site_figures(metrics, ext: External, obs: Observed, site_column: str | None, stat, y, probs, names, pos,
                  n_bootstrap: int, seed: int) -> np.ndarray | None:
    if site_column is None and (ext.spec.extra or {}).get("source") == "btxrd":
        site_column = "center"  # BTXRD names each image's centre
        metrics["notes"].append("sites: BTXRD's center column")
    sites = _sites(ext, obs, site_column)
    if sites is not None:
        metrics["sites"] = {"column": site_column, **per_site(stat, y, probs, sites, names, pos,
                                                             n_resamples=min(n_bootstrap, 500), seed=seed)}
    return sites


def validate_model(model: str | Path, source: str, *, label_map: str | Path | dict | None = None,
                   site_column: str | None = None, split: str = "all", options: dict[str, Any] | None = None,
                   data_dir: str | None = None, checkpoint: str = "best", backend: str = "auto",
                   device: torch.device | None = None, n_bootstrap: int = 1000, seed: int = 0,
                   recalibrate: str | None = None, fit_fraction: float = 0.5, internal: str | Path | None = None,
                   batch_size: int = 64, num_workers: int = 0) -> Validation:
    """Every figure of an external validation of ``model`` (run or bundle) on ``source``; writes nothing."""
    mapping = _options(label_map, recalibrate, fit_fraction, n_bootstrap)
    art, pred, ext, obs = _run_model(model, source, mapping=mapping, site_column=site_column, split=split,
                                     options=options, data_dir=data_dir, checkpoint=checkpoint, backend=backend,
                                     device=device, batch_size=batch_size, num_workers=num_workers)
    spec, post = art.spec.dataset, pred.postprocess
    task, names, pos = spec.task, list(spec.class_names), spec.positive_index
    probs, y = post.probabilities(obs.logits, task), ext.labels[obs.rows]
    stat = stat_for(task, names, pos, post.threshold)
    ext_block, ext_boot = external_block(task, y, probs, post, names, pos, n_resamples=n_bootstrap, seed=seed)
    inside, where = _internal(art, internal, stat, n_bootstrap, seed, art.checkpoint_name(checkpoint))
    aucs = ext_block["figures"]
    sizes, warnings = sample_size_check(task, y, probs, names, pos,
                                        lambda c: aucs["auc" if task == "binary" else f"auc[{c}]"]["value"])
    metrics: dict[str, Any] = {
        "task": task, "model": _model_block(art, pred, checkpoint),
        "source": _source_block(ext, obs, split, dict(options or {})), "n": len(y),
        "per_class": dict(zip(names, np.bincount(y, minlength=len(names)).tolist(), strict=True)),
        "events": int((y == pos).sum()) if pos is not None else None, "n_bootstrap": n_bootstrap, "seed": seed,
        "external": ext_block, "internal": None if inside is None else {
            "from": where, "n": inside["n"], "events": inside["events"], "figures": inside["figures"]},
        "difference": None if inside is None else difference(inside, ext_boot),  # external - internal
        "internal_missing": None if inside is not None else where,
        "case_mix": _case_mix(art, pred, ext, obs, probs, seed), "sample_size": sizes,
        "warnings": warnings, "notes": ext.notes + ([] if inside is not None else [where])}
    sites = _site_figures(metrics, ext, obs, site_column, stat, y, probs, names, pos, n_bootstrap, seed)
    frame = _frame(ext, obs, probs, names, pos, post, sites, pred.ood)
    if recalibrate is None:
        return Validation(metrics, frame)
    return _recalibrated(metrics, frame, recalibrate, task, y, obs, post, names, pos, fit_fraction=fit_fraction,
                         seed=seed, n_bootstrap=n_bootstrap, source=source)


def _recalibrated(metrics, frame, method, task, y, obs, post, names, pos, *, fit_fraction, seed, n_bootstrap,
                  source) -> Validation:
    from .update import recalibration

    block, fit, new_post = recalibration(method, task, y, obs.logits, post,
                                         lambda t: stat_for(task, names, pos, t), pos=pos, fraction=fit_fraction,
                                         seed=seed, n_resamples=n_bootstrap, source=source)
    metrics["recalibration"] = block
    frame["part"] = np.where(fit, "fit", "held-out")
    new_probs = new_post.probabilities(obs.logits, task)
    for k, c in enumerate(names):
        if task != "binary" or k == pos:
            frame[f"prob_{c}_recalibrated"] = new_probs[:, k]
    return Validation(metrics, frame, {metrics["model"]["checkpoint"]: new_post.to_dict()})


def output_dir(model: str | Path, name: str, out_dir: str | Path | None) -> Path:
    """``validate-<name>/`` in ``out_dir``, else in the run directory (a bundle: the working directory)."""
    if out_dir is not None:
        parent = Path(out_dir)
    else:
        parent = Path(model) if (Path(model) / "model.json").is_file() else Path.cwd()
    return parent / f"validate-{name}"


def _base_card(m: dict[str, Any]) -> str | None:
    """The run's own model card (beside its internal test evaluation), when there is one."""
    card = Path(m["internal"]["from"]) / "model_card.md" if m.get("internal") else None
    return card.read_text() if card is not None and card.is_file() else None


def write_validation(result: Validation, out: Path) -> Path:
    """metrics.json, predictions.csv, report.html, model_card.md (and postprocess.json when recalibrated) assembled in a hidden staging folder
    beside ``out`` and renamed into place: the folder is complete or absent, and never overwritten."""
    import shutil

    from ..reports.validation import validation_card, write_validation_report
    from ..utils import atomic_write_json, atomic_write_text, check_new_output, new_staging_dir, place_staged

    check_new_output(out, "validations", hint="choose another --name or --output-dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_staging_dir(out.parent, ".validate-")
    try:
        atomic_write_json(tmp / "metrics.json", result.metrics)
        atomic_write_text(tmp / "predictions.csv", result.frame.to_csv(index=False))
        if result.postprocess is not None:
            atomic_write_json(tmp / "postprocess.json", result.postprocess)
        write_validation_report(result.metrics, tmp)
        atomic_write_text(tmp / "model_card.md", validation_card(result.metrics, _base_card(result.metrics)))
        place_staged(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out
    return out
