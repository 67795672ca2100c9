"""A Markdown model card (``eval-<split>/model_card.md``) following the TRIPOD+AI items that apply.

It is generated from the run directory and the evaluation metrics only; the
sections a human must complete (intended users, ethics review) are worded as
defaults for a research model and should be edited before any sharing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..metrics import HEADLINE
from ..metrics.operating_points import provenance
from ..runs import Run
from ..utils import atomic_write_text
from .evaluation import leakage_lines, operating_points, read_json, stored_postprocess
from .kit import fmt, fmt_ci, fmt_percent, fmt_threshold, md_table

NOT_CLINICAL = ("**Not for clinical use.** This model is a research artefact. It has not been validated "
                "prospectively or externally, is not a medical device, and must not be used to diagnose, "
                "triage or treat patients.")


def _caveats(run: Run) -> list[str]:
    src = str(run.data_summary.get("source", ""))
    out = []
    if src.startswith("medmnist:"):
        size = run.dataset.native_size
        out.append(f"MedMNIST images are heavily downsampled ({size}×{size} px); fine findings visible at full "
                   "resolution are lost and results may not transfer to full-resolution images.")
        if run.leakage is None or run.leakage.get("group_overlap") is None:
            out.append("MedMNIST's official splits are used as provided; they carry no patient ids, so "
                       "patient-level separation between splits cannot be verified.")
    out += leakage_lines(run)[0]
    if src == "medmnist:pneumoniamnist":
        out.append("Pneumonia data are paediatric chest X-rays from one hospital; performance on adults, other "
                   "sites, devices or acquisition protocols is unknown.")
    return out


def _label_sections(metrics: dict[str, Any], post: dict[str, Any], split: str) -> list[str]:
    """Multilabel: per-label performance at the thresholds in use, and where each threshold came from."""
    dec = metrics.get("decision") or {}
    per, rules = dec.get("per_label") or {}, dec.get("rules") or {}
    chosen = (post.get("operating_points") or {}).get("per_label") or {}
    applied = (metrics.get("operating_points") or {}).get("per_label") or {}
    rows = []
    for name, c in (metrics.get("per_class") or {}).items():
        d, rule = per.get(name) or {}, rules.get(name, "?")
        here = (applied.get(name) or {}).get(rule) or {}
        at = {k: fmt_ci(here[k], style="range") if isinstance(here.get(k), dict) else fmt(d.get(k))
              for k in ("sensitivity", "specificity")}
        auc = fmt_ci({**(c.get("auc_delong") or {}), "value": c.get("auc")}, style="range")
        rows.append([name, fmt(c.get("prevalence")), auc, fmt(c.get("ap")),
                     f"{fmt_threshold(d['threshold'])} ({rule})" if d else "—", at["sensitivity"], at["specificity"]])
    out = [f"## Per-label performance ({split} split)", "",
           *md_table(["label", "prevalence", "AUC (95% CI)", "AP", "threshold (rule)", "sensitivity",
                      "specificity"], rows), "",
           "AUC CIs by DeLong; sensitivity/specificity at each label's threshold"
           + (" with stratified bootstrap 95% CIs." if applied else "."), "",
           "## Operating points in use (one per label)", "",
           f"- Rule **{dec.get('operating_point', '?')}** applied to each label on its own; a case's findings are the "
           "labels with calibrated p ≥ that label's threshold; no label above its threshold = \"no finding\"."]
    for name, entry in chosen.items():
        prov = entry.get("fallback") or (f"chosen on {entry.get('chosen_on', 'val')} (n = {entry.get('n', '?')}, "
                                         f"{entry.get('n_positive', '?')} positive)")
        t = (per.get(name) or {}).get("threshold")
        out.append(f"- `{name}`: threshold {fmt_threshold(t) if t is not None else '—'} — {prov}")
    out += [f"- At these thresholds on {split}: subset accuracy {fmt(dec.get('subset_accuracy'))}, macro F1 "
            f"{fmt(dec.get('macro_f1'))}; {dec.get('n_no_finding', '?')} of {dec.get('n', '?')} cases with no finding.", ""]
    return out


def _details(run: Run, split: str) -> list[str]:
    from .. import __version__

    spec, m, ms = run.dataset, run.config.model, run.model_spec
    env = read_json(run.path / "env.json")
    names = list(spec.class_names)
    pos = names[spec.positive_index] if spec.task == "binary" and spec.positive_index is not None else None
    arch = (f"- **Architecture:** `{ms.architecture}` (timm; pretrained={m.pretrained}, stem={ms.stem}, "
            f"drop_rate={ms.drop_rate}), {spec.num_classes} outputs, task **{spec.task}**")
    if ms.ensemble is not None:
        e = ms.ensemble
        arch = (f"- **Architecture:** ensemble of {len(e['members'])} models, {e.get('combine')} "
                f"({e.get('weighting')} weights), {spec.num_classes} outputs, task **{spec.task}**; members: "
                + "; ".join(f"`{d['architecture']}` (stem {d.get('stem')}, T = {t:.3g}, weight {w:.3g}, from "
                            f"`{Path(src).name}`)" for d, t, w, src in
                            zip(e["members"], e["temperatures"], e["weights"], e["sources"], strict=True)))
    return [f"# Model card: {spec.name} · {ms.architecture}", "", f"> {NOT_CLINICAL}", "", "## Model details", "",
            f"- **Run:** `{run.path.name}` (trained {env.get('started', 'unknown date')}, git {env.get('git_sha') or 'unknown'})",
            arch,
            f"- **Classes:** {', '.join(names)}" + (f" (positive class: **{pos}**)" if pos else ""),
            f"- **Software:** medcls {__version__}, torch {env.get('torch', '?')}, timm {env.get('timm', '?')}",
            f"- **Card generated:** {time.strftime('%Y-%m-%d %H:%M')} from the `{split}` evaluation", "",
            "## Intended use", "",
            f"- Research and benchmarking of {spec.task} classification of {spec.name} images ({', '.join(names)}).",
            "- Intended users: machine-learning and medical-imaging researchers, who interpret outputs "
            "alongside the limitations below.", "",
            "## Out-of-scope uses", "",
            "- Any clinical decision: diagnosis, screening, triage or treatment of real patients.",
            "- Images from other sites, scanners, populations, modalities or resolutions than the training data.",
            "- Use of the probabilities as calibrated risks outside the data distribution of the validation split.", ""]


def _data_and_training(run: Run, metrics: dict[str, Any]) -> list[str]:
    cfg, spec, d = run.config, run.dataset, run.data_summary
    t, tr, names = cfg.train, run.metrics().get("train", {}), list(run.dataset.class_names)
    splits, notes = d.get("splits") or {}, d.get("notes") or []
    L = ["## Data and splits", "", f"- **Source:** `{d.get('source', '?')}`"
         + (f" (licence {spec.extra['license']})" if spec.extra.get("license") else ""), "",
         *md_table(["split", *names, "total"],
                   [[s, *(str(v.get("per_class", {}).get(c, "—")) for c in names), str(v.get("n", "—"))]
                    for s, v in splits.items()]), "",
         "- **How val/test were made:** " + ("; ".join(notes) if notes else
                                              "official splits of the source used as provided (no re-splitting)."),
         f"- Split seed {cfg.data.split_seed}; " + (f"each split limited to {cfg.data.limit} samples."
                                                    if cfg.data.limit else "no subsampling."), ""]
    pre = run.preprocess_cfg.to_dict()
    L += ["## Preprocessing", "", "- " + ", ".join(f"{k}={v}" for k, v in pre.items()),
          f"- Training augmentation preset `{cfg.transforms.preset}` (strength {cfg.transforms.strength}); "
          "none at evaluation.", "",
          "## Model training", "",
          f"- {t.epochs} epochs planned, {tr.get('epochs_run', '?')} run; batch size {t.batch_size}; optimizer "
          f"{t.optimizer} (lr {t.lr}, weight decay {t.weight_decay}); scheduler {t.scheduler}; loss {t.loss} "
          f"(label smoothing {t.label_smoothing}); class weights {t.class_weights}; seed {cfg.seed}",
          f"- Model selection: best validation **{tr.get('monitor', t.monitor)}** at epoch "
          f"**{tr.get('best_epoch', '?')}** (value {fmt(tr.get('best_value'), 4)}); evaluated checkpoint "
          f"`{metrics.get('checkpoint', 'best')}` (epoch {metrics.get('checkpoint_epoch', '?')})", ""]
    return L


def _performance(task: str, split: str, metrics: dict[str, Any]) -> list[str]:
    ci = metrics.get("ci") or {}
    rows = [[k, fmt(metrics[k]), fmt_ci(ci.get(k), value=False, style="range")] for k in HEADLINE
            if isinstance(metrics.get(k), int | float)]
    if isinstance(metrics.get("auc_delong"), dict):
        rows.append(["auc (DeLong CI)", fmt(metrics["auc_delong"].get("value")),
                     fmt_ci(metrics["auc_delong"], value=False, style="range")])
    how = (f"Threshold-dependent metrics use threshold {fmt_threshold(metrics.get('threshold', 0.5))}"
           + (" for every label (auc = macro mean over labels where defined, micro_auc pools all case-label "
              "pairs; accuracy = mean per-label accuracy); decisions use one threshold per label (below)"
              if task == "multilabel" else "")
           if task != "multiclass" else "Class predictions are the arg-max class")
    how += f"; 95% CIs by {ci.get('method')} ({ci.get('n_resamples')} resamples)." if ci else "; no CIs."
    return [f"## Performance ({split} split, n = {metrics.get('n', '?')})", "",
            *md_table(["metric", "value", "95% CI"], rows), "", how, ""]


def _calibration(task: str, split: str, metrics: dict[str, Any]) -> list[str]:
    cal, pp = metrics.get("calibration") or {}, metrics.get("postprocess") or {}
    if "error" in cal:
        return ["## Calibration", "", f"- Not available: {cal['error']}", ""]
    before, after = cal.get("before") or {}, cal.get("after") or {}
    return ["## Calibration", "",
            f"- Temperature scaling fitted on val: T = {fmt(cal.get('temperature', pp.get('temperature')), 4)}"
            + (" (one T shared by all labels: sigmoid(logit / T))" if task == "multilabel" else ""),
            f"- ECE before {fmt(before.get('ece'), 4)} → after {fmt(after.get('ece'), 4)}; Brier before "
            f"{fmt(before.get('brier'), 4)} → after {fmt(after.get('brier'), 4)} (on {split})", ""]


def _operating_point(run: Run, split: str, metrics: dict[str, Any], post: dict[str, Any]) -> list[str]:
    spec, pp = run.dataset, metrics.get("postprocess") or {}
    pos = spec.class_names[spec.positive_index]
    sel = pp.get("selected", "default")
    op = (post.get("operating_points") or {}).get(sel) or {}
    val, here = op.get("val") or {}, operating_points(metrics).get(sel) or {}
    where = provenance(sel, (post.get("operating_points") or {}).get("chosen_on", "val"))
    where = "fixed in the configuration (eval.threshold), not fitted" if where == "fixed" else \
        f"{where} (n = {post.get('n_val', '?')})"
    L = ["## Operating point in use", "",
         f"- Rule **{sel}**: {op.get('rule', '?')}; threshold **{fmt_threshold(pp.get('threshold', 0.5))}** on p({pos})",
         f"- Provenance: {where}; val sensitivity {fmt(val.get('sensitivity'))}, "
         f"val specificity {fmt(val.get('specificity'))}"]
    if here:
        L.append(f"- On {split}: sensitivity {fmt_ci(here['sensitivity'], style='range')}, "
                 f"specificity {fmt_ci(here['specificity'], style='range')}")
    transfer = metrics.get("threshold_transfer") or {}
    flagged = {k: v["flags"] for k, v in transfer.items() if v.get("flags")}
    for name, flags in flagged.items():
        L.append(f"- **Threshold transfer, {name}**: " + "; ".join(flags) + " (did not hold on " + split + ")")
    others = ", ".join(k for k in operating_points(metrics) if k != sel)
    return [*L, f"- Other rules ({others}) are listed in report.html.", ""]


def _limitations(run: Run, metrics: dict[str, Any]) -> list[str]:
    lim = ["Single-source data: no external validation on another site or population has been done.",
           "Test-set performance estimates carry the uncertainty shown by the CIs and may be optimistic if "
           "the test distribution matches training more closely than deployment data would.",
           *_caveats(run), *(f"Evaluation note: {n}" for n in (metrics.get("postprocess") or {}).get("notes") or []),
           *(f"Data note: {n}" for n in run.data_summary.get("notes") or [])]
    return ["## Limitations", "", *(f"- {x}" for x in lim), "",
            "## Ethical considerations", "",
            ("- Subgroup performance is reported above for " + ", ".join(metrics["subgroups"]["columns"]) + "; other "
             "subgroups (age, sex, device, site) were not assessed." if metrics.get("subgroups") else
             "- Subgroup performance (age, sex, device, site) was not assessed (set eval.subgroups to metadata "
             "columns to report it)."),
            "- Errors have asymmetric costs (missed disease vs. false alarm); any threshold must be chosen "
            "with clinicians for a specific setting and re-validated there.",
            "- Public de-identified data; no new patient data were collected for this model.", "",
            "## Not for clinical use", "", NOT_CLINICAL, ""]


def _subgroups(split: str, sub: dict[str, Any]) -> list[str]:
    L = ["## Subgroup performance", "",
         f"On {split}, per value of each metadata column, with 95% bootstrap CIs; *small* subgroups (n < "
         f"{sub['min_n']} or fewer than {sub['min_per_class']} of a class) have wide CIs and are left out of the "
         "largest gap.", ""]
    for col, c in sub["columns"].items():
        names = c["metrics"]
        rows = [[str(g["group"]) + (" *(small)*" if g["small"] else ""), str(g["n"]),
                 *(fmt_ci(g[m], style="range") for m in names)] for g in c["groups"]]
        L += [f"**{col}**", "", *md_table(["subgroup", "n", *names], rows), ""]
        gap = c.get("largest_gap")
        if gap:
            L += [f"Largest AUC gap: {gap['higher']} vs {gap['lower']}, {fmt(gap['difference'], signed=True)} "
                  f"(p = {fmt(gap['p_value'])}, {gap['test']}).", ""]
    return L


def write_model_card(run: Run, split: str, metrics: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/model_card.md`` for ``run`` evaluated on ``split``."""
    task, post = run.dataset.task, stored_postprocess(run, metrics)
    L = [*_details(run, split), *_data_and_training(run, metrics), *_performance(task, split, metrics),
         *_calibration(task, split, metrics)]
    if task == "binary":
        L += _operating_point(run, split, metrics, post)
    if task == "multilabel":
        L += _label_sections(metrics, post, split)
    if metrics.get("subgroups"):
        L += _subgroups(split, metrics["subgroups"])
    L += _limitations(run, metrics)
    path = Path(out_dir) / "model_card.md"
    atomic_write_text(path, "\n".join(L))
    return path


def pruning_lines(report: dict[str, Any]) -> list[str]:
    """The "Model compression" section: what pruning removed and what it cost on val."""
    before, after = report.get("params_before"), report.get("params_after")
    share = f" ({fmt_percent(after / before)} of the original)" if before and after else ""
    tune = report.get("fine_tune") or {}
    how = (f"fine-tuned {report.get('fine_tune_epochs')} epoch(s) on the training split (lr {tune.get('lr')}, "
           f"{tune.get('scheduler')}; best val {tune.get('monitor')} at epoch {tune.get('best_epoch')})"
           + (f"; kept {tune['kept']}" if tune.get("kept") else "")
           + "; same preprocessing and augmentation as training" if report.get("fine_tune_epochs")
           else "none (0 fine-tune epochs)")
    return ["## Model compression (pruning)", "",
            f"- **Method:** {report.get('method', '?')}; {fmt(report.get('ratio'), 2)} of the channels removed",
            f"- **Parameters:** {before:,} → {after:,}{share}" if before and after else "- **Parameters:** —",
            f"- **Fine-tuning:** {how}",
            f"- **Val AUC:** {fmt(report.get('val_auc_before'), 4)} before pruning → "
            f"{fmt(report.get('val_auc_pruned_before_fine_tune'), 4)} right after → "
            f"{fmt(report.get('val_auc_after'), 4)} as exported",
            "- Temperature and operating points were re-fitted on val for the pruned model.", ""]


def pruned_card(run: Run, checkpoint: str, report: dict[str, Any]) -> str:
    """The model card of a pruned bundle: its source, the compression section, where the full card is."""
    ms = run.model_spec
    return "\n".join([f"# Model card: {run.dataset.name} · {ms.architecture}, pruned", "", f"> {NOT_CLINICAL}", "",
                      f"- **Source run:** `{run.path.name}`, checkpoint `{checkpoint}`; data, training, intended use "
                      "and limitations are those of the source run's model card (`eval-<split>/model_card.md`, "
                      "whose performance numbers are for the unpruned model).",
                      f"- **Classes:** {', '.join(run.dataset.class_names)}", "", *pruning_lines(report),
                      "## Not for clinical use", "", NOT_CLINICAL, ""])


def recalibrated_card(run: Run, checkpoint: str, post: Any, validation: dict[str, Any]) -> str:
    """The model card of a bundle recalibrated on external data: its source, the update and the validation it
    came from (where the full card of the run is)."""
    from .validation import external_validation_lines, recalibration_lines

    r = post.recalibration or {}
    ms = run.model_spec
    body = (external_validation_lines(validation) if validation.get("external") else
            recalibration_lines(validation["recalibration"]) if validation.get("recalibration") else
            [f"- **Update:** {r}", ""])
    return "\n".join([f"# Model card: {run.dataset.name} · {ms.architecture}, recalibrated on external data", "",
                      f"> {NOT_CLINICAL}", "",
                      f"- **Source run:** `{run.path.name}`, checkpoint `{checkpoint}`; data, training, intended use "
                      "and limitations are those of the source run's model card (`eval-<split>/model_card.md`, "
                      "whose performance numbers are for the model before this update).",
                      f"- **RECALIBRATED ({r.get('method')}):** probabilities are updated: "
                      + (f"temperature {fmt(r.get('temperature_before'), 4)} → {fmt(post.temperature, 4)}"
                         if r.get("method") == "temperature" else
                         f"logit p' = {fmt(r.get('intercept'), 4)} + {fmt(r.get('slope'), 4)} × logit p after T = "
                         f"{fmt(post.temperature, 4)}")
                      + f"; fitted on {(r.get('fitted_on') or {}).get('n')} cases of "
                      f"`{(r.get('fitted_on') or {}).get('source')}`; operating point {post.selected} at "
                      f"{fmt_threshold(post.threshold)} on the new scale.", "", *body,
                      "## Not for clinical use", "", NOT_CLINICAL, ""])
