"""A single self-contained HTML report for one evaluated split: ``eval-<split>/report.html``.

Built with :mod:`.kit`: every figure is embedded as a base64 PNG data URI and the CSS is inline, so
the file opens offline, can be mailed or archived, and prints cleanly. All
text taken from the run (config, notes, class names) is HTML-escaped.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..metrics import confusion_counts
from ..runs import Run
from ..utils import atomic_write_text
from .kit import ci_cell, confusion_table, escape, figure, fmt, fmt_ci, fmt_threshold, footer, img, page, section, table

MAX_GALLERY = 24
GRADCAM_HINT = "medcls evaluate RUN --gradcam-errors 8"
NOT_CLINICAL = "Research use only — not for clinical decision making."


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def operating_points(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """rule name -> entry, for the binary operating points evaluated on this split."""
    ops = metrics.get("operating_points") or {}
    return {k: v for k, v in ops.items() if isinstance(v, dict) and "threshold" in v}


def _data(run: Run) -> str:
    d = run.data_summary
    names = list(run.dataset.class_names)
    splits = d.get("splits") or {}
    rows = [[escape(s), *(fmt(v.get("per_class", {}).get(c)) for c in names), fmt(v.get("n"))]
            for s, v in splits.items()]
    pre = run.preprocess_cfg.to_dict()
    out = (f'<p>Source <code>{escape(d.get("source", "?"))}</code> · dataset '
           f'<b>{escape(run.dataset.name)}</b> · task {escape(run.dataset.task)}'
           + (f" · positive class <b>{escape(names[run.dataset.positive_index])}</b>"
              if run.dataset.task == "binary" and run.dataset.positive_index is not None else "") + "</p>"
           + table(["split", *names, "total"], rows)
           + "<p>Preprocessing: " + escape(", ".join(f"{k}={v}" for k, v in pre.items())) + "</p>")
    out += _leakage(run)
    notes = d.get("notes") or []
    out += ("<h3>Data notes</h3><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>" if notes
            else '<p class="muted">No data notes were recorded (splits used as provided by the source).</p>')
    return out


def leakage_lines(run: Run) -> tuple[list[str], bool]:
    """What the check of the run's own splits found, as sentences, and whether it found leakage."""
    lk = run.leakage
    if lk is None:
        return (["The run's splits were not checked for shared images or patients (data.leakage_check=off, or "
                 "a run older than the check): validation and test may overlap with train."], False)
    if not lk.get("leakage"):
        ids = "no patient/group ids to compare" if lk.get("group_overlap") is None else "no patient/group id shared"
        sampled = " (on an evenly spaced sample)" if (lk.get("rules") or {}).get("sampled") else ""
        return ([f"No exact or near-duplicate images are shared between the run's splits{sampled}; {ids}."], False)
    lines = [f"The run's splits share data: {r}." for r in lk.get("reasons", [])]
    if any(r.startswith("train/val") for r in lk.get("reasons", [])):
        lines.append("Validation is optimistic: the best checkpoint, the calibration and the operating points were "
                     "chosen on a split that shares images or patients with training.")
    if any("/test" in r.split(":")[0] for r in lk.get("reasons", [])):
        lines.append("Test metrics are optimistic: the test split shares images or patients with the others.")
    return lines, True


def _leakage(run: Run) -> str:
    lines, found = leakage_lines(run)
    lk = run.leakage or {}
    rows = []
    for pair in ("train/val", "train/test", "val/test"):
        ex, nr = (lk.get("exact_duplicates") or {}).get(pair), (lk.get("near_duplicates") or {}).get(pair)
        go = (lk.get("group_overlap") or {}).get(pair)
        if ex or nr:
            rows.append([pair, fmt((ex or {}).get("pairs")), fmt((nr or {}).get("pairs")),
                         fmt(go["groups"]) if go else "not checked"])
    body = "".join(f'<div class="banner"><b>Leakage:</b> {escape(x)}</div>' if found else f"<p>{escape(x)}</p>"
                   for x in lines)
    if rows:
        body += table(["splits", "exact duplicate pairs", "near-duplicate pairs", "shared patient/group ids"], rows)
        body += f'<p class="muted">{escape((lk.get("rules") or {}).get("near_duplicate_rule", ""))}</p>'
    return "<h3>Leakage between this run's splits</h3>" + body


def _history(run: Run, out_dir: Path, tmp: Path) -> Path:
    """The evaluation's history.png (validation rates per epoch), drawn here only when it is missing."""
    hist, drawn = run.path / "history.csv", out_dir / "history.png"
    if drawn.is_file() or not hist.is_file():
        return drawn
    import pandas as pd

    from .plots import history_rates, plot_history

    rows = pd.read_csv(hist).to_dict("records")
    try:
        return plot_history(tmp / "history.png", rows, metrics=history_rates(rows))
    except DataError:
        return drawn


def _ensemble(run: Run, metrics: dict[str, Any]) -> str:
    """An ensemble's members (from ``ensemble.json``): where each came from, its temperature, weight, val AUC."""
    info = read_json(run.path / "ensemble.json")
    rows = [[escape(Path(m.get("run", "?")).name), escape(m.get("architecture")), fmt(m.get("seed")),
             fmt(m.get("temperature"), 3), fmt(m.get("weight"), 3), fmt(m.get("val_auc"), 4)]
            for m in info.get("members", [])]
    val = info.get("val") or {}
    return (f"<p>Ensemble of {len(rows)} trained runs: {escape(run.model_spec.ensemble.get('combine'))}, "
            f"{escape(info.get('weighting'))} weights; val AUC of the mixture <b>{fmt(val.get('auc'), 4)}</b>; "
            f"evaluated checkpoint: {escape(metrics.get('checkpoint', 'best'))}.</p>"
            + table(["member run", "architecture", "seed", "T", "weight", "val AUC"], rows))


def _training(run: Run, out_dir: Path, metrics: dict[str, Any], tmp: Path) -> str:
    if run.model_spec.ensemble is not None:
        return _ensemble(run, metrics)
    t = run.metrics().get("train", {})
    facts = [f"monitor <b>{escape(t.get('monitor', run.config.train.monitor))}</b>"]
    if "best_epoch" in t:
        facts.append(f"best epoch <b>{fmt(t['best_epoch'])}</b> (val {fmt(t.get('best_value'), 4)})")
    if "epochs_run" in t:
        facts.append(f"{fmt(t['epochs_run'])} epoch(s) run of {run.config.train.epochs}")
    if isinstance(t.get("train_seconds"), int | float):
        facts.append(f"{fmt(t['train_seconds'] / 60, 1)} min training")
    facts.append(f"evaluated checkpoint: {escape(metrics.get('checkpoint', 'best'))} "
                 f"(epoch {fmt(metrics.get('checkpoint_epoch'))})")
    return "<p>" + " · ".join(facts) + "</p>" + img(_history(run, out_dir, tmp), "training history")


def _metrics(metrics: dict[str, Any], split: str) -> str:
    ci = metrics.get("ci") or {}
    skip = {"n", "tp", "fp", "tn", "fn", "threshold", "prevalence", "split", "checkpoint_epoch"}
    keys = [k for k, v in ci.items() if isinstance(v, dict) and "value" in v]
    keys += [k for k, v in metrics.items() if k not in keys and k not in skip
             and isinstance(v, int | float) and not isinstance(v, bool)]
    rows = [[escape(k), fmt(metrics.get(k, ci.get(k, {}).get("value"))), fmt_ci(ci.get(k), value=False)] for k in keys]
    dl = metrics.get("auc_delong")
    if isinstance(dl, dict):
        rows.append(["auc (DeLong)", fmt(dl.get("value")), fmt_ci(dl, value=False)])
    for k, v in (metrics.get("tta") or {}).items():
        if k in keys and isinstance(v, int | float):
            rows.append([f"{escape(k)} (TTA)", fmt(v), fmt_ci((metrics["tta"].get("ci") or {}).get(k), value=False)])
    how = escape(ci.get("method", ""))
    out = (f"<p>{escape(split)} split, n = {fmt(metrics.get('n'))}"
           + (f", decision threshold {fmt_threshold(metrics['threshold'])}" if "threshold" in metrics else "")
           + (f"; 95% CI by {how} ({fmt(ci.get('n_resamples'))} resamples)" if how else "; no bootstrap CIs")
           + "</p>" + table(["metric", "value", "95% CI [low, high]"], rows))
    per_class = metrics.get("per_class") or {}
    if per_class:
        cols = ["auc", "ap", "sensitivity", "specificity", "ppv", "npv", "f1", "support"]
        cols = [c for c in cols if any(c in v for v in per_class.values())]
        if metrics.get("task") == "multilabel":
            out += _per_label(metrics, per_class, cols)
        else:
            out += "<h3>Per class</h3>" + table(["class", *cols], [[escape(c), *(fmt(v.get(k)) for k in cols)]
                                                                    for c, v in per_class.items()])
    return out


def _per_label(metrics: dict[str, Any], per_class: dict[str, Any], cols: list[str]) -> str:
    """Multilabel: one row per label, AUC with its DeLong CI, labels with one class flagged."""
    skipped = metrics.get("skipped_labels") or {}
    rows = [[escape(c) + (' <small>(one class here)</small>' if c in skipped else ""),
             *(ci_cell({**v["auc_delong"], "value": v.get(k)}) if k == "auc" and "auc_delong" in v else fmt(v.get(k))
               for k in cols)]
            for c, v in per_class.items()]
    out = (f"<h3>Per label</h3><p>AUC with DeLong 95% CI; AP; sensitivity … F1 at threshold "
           f"{fmt_threshold(metrics.get('threshold', 0.5))} for every label (the per-label operating points are "
           "below). <code>auc</code> above is the macro mean over labels where it is defined; "
           "<code>micro_auc</code> pools every (case, label) pair.</p>" + table(["label", *cols], rows))
    return out + "".join(f'<div class="banner"><b>{escape(c)}:</b> {escape(r)}</div>' for c, r in skipped.items())


def _operating_points(run: Run, out_dir: Path, metrics: dict[str, Any]) -> str:
    pp = metrics.get("postprocess") or {}
    notes = pp.get("notes") or []
    out = "".join(f'<div class="banner"><b>Note:</b> {escape(n)}</div>' for n in notes)
    ops = operating_points(metrics)
    if run.dataset.task == "multilabel":
        return out + _label_operating_points(run, metrics) + '<div class="figs">' + figure(out_dir / "roc.png", "ROC") \
            + figure(out_dir / "pr.png", "Precision-recall") + "</div>"
    if run.dataset.task != "binary":
        return out + "<p>Operating points apply to binary and multilabel tasks; this run is multiclass " \
            "(prediction = arg-max class).</p>" + '<div class="figs">' + figure(out_dir / "roc.png", "ROC") + \
            figure(out_dir / "pr.png", "Precision-recall") + "</div>"
    post_all = stored_postprocess(run, metrics)
    transfer, selected, split = metrics.get("threshold_transfer") or {}, pp.get("selected"), metrics.get("split", "")
    rows, classes = [], []
    for name, op in ops.items():
        tr = transfer.get(name) or {}
        flags = tr.get("flags") or []
        cells = [escape(name) + ('<span class="tag">in use</span>' if name == selected else ""),
                 f'<span title="{op["threshold"]!r}">{fmt_threshold(op["threshold"])}</span>',
                 f'<small>{escape(op.get("rule", ""))}</small>', escape(tr.get("provenance", "?"))]
        cells += [_transfer_cell(tr.get(k) or {}, op.get(k)) for k in ("sensitivity", "specificity")]
        cells += [ci_cell(op.get(k)) for k in ("ppv", "npv")]
        cells.append("<br>".join(f'<span class="warn">&#9888; {escape(f)}</span>' for f in flags) or "held")
        rows.append(cells)
        classes.append("selected" if name == selected else "")
    n_flagged = sum(bool((transfer.get(n) or {}).get("flags")) for n in ops)
    if rows:
        out += (f'<div class="banner"><b>Threshold transfer:</b> {n_flagged} of {len(rows)} operating points did not '
                f"hold on {escape(split)}: what they showed on validation lies outside the {escape(split)} "
                "95% CI (or its target was missed). Re-check thresholds on data from the deployment site.</div>"
                if n_flagged else "")
        out += (f"<p>Thresholds on p({escape(metrics.get('positive_class', ''))}): <i>fixed</i> ones come from the "
                f"configuration; <i>fitted</i> ones were chosen on the validation split (n = "
                f"{fmt(post_all.get('n_val'))}) and applied unchanged to {escape(split)}. Sensitivity and "
                f"specificity show the validation value, then the {escape(split)} value with its 95% CI.</p>"
                + '<div class="wide">' + table(["rule", "threshold", "definition", "provenance",
                                                 "sensitivity (val → here)", "specificity (val → here)",
                                                 "PPV", "NPV", "transfer"], rows, classes) + "</div>")
    else:
        out += "<p>No operating points were evaluated (bootstrap disabled or none could be chosen).</p>"
    dca = ("<p>Decision curve: the net benefit of acting on the model at each threshold probability, against "
           "treating every case and none (Vickers &amp; Elkin, 2006); where the model's curve is not above both, "
           "using it does not help at that risk threshold.</p>") if (out_dir / "decision_curve.png").is_file() else ""
    return out + '<div class="figs">' + figure(out_dir / "roc.png", "ROC with operating points and its 95% band") + \
        figure(out_dir / "pr.png", "Precision-recall with operating points") + "</div>" + dca + \
        '<div class="figs">' + figure(out_dir / "decision_curve.png", "Decision curve (net benefit)") + "</div>"


def _transfer_cell(tr: dict[str, Any], here: Any) -> str:
    """``val -> here [CI]`` with the target, if any."""
    chosen = f"{fmt(tr['chosen'])} → " if tr.get("chosen") is not None else ""
    target = f"<br><small>target {fmt(tr['target'], 2)}</small>" if tr.get("target") is not None else ""
    return chosen + ci_cell(here) + target


def _subgroups(metrics: dict[str, Any]) -> str:
    sub = metrics["subgroups"]
    out = (f"<p>Per value of each metadata column, on {escape(metrics.get('split', ''))}, with 95% bootstrap "
           f"CIs. <i>Small</i> subgroups (n &lt; {sub['min_n']} or fewer than {sub['min_per_class']} cases of a "
           "class) have wide CIs and are left out of the largest gap.</p>")
    for col, c in sub["columns"].items():
        names = c["metrics"]
        rows = [[escape(g["group"]) + (' <span class="warn">small</span>' if g["small"] else ""), fmt(g["n"]),
                 escape(", ".join(f"{k} {v}" for k, v in g["per_class"].items())),
                 *(ci_cell(g[m]) for m in names)] for g in c["groups"]]
        out += f"<h3>{escape(col)}</h3>" + table(["subgroup", "n", "cases per class", *names], rows)
        gap = c.get("largest_gap")
        out += (f'<p>Largest AUC gap: <b>{escape(gap["higher"])}</b> vs <b>{escape(gap["lower"])}</b>, '
                f'{fmt(gap["difference"], signed=True)} (p = {fmt(gap["p_value"])}, {escape(gap["test"])}).</p>'
                if gap else '<p class="muted">No gap reported: fewer than two subgroups large enough.</p>')
    return out


def stored_postprocess(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    """The calibration stored for the evaluated checkpoint (``{}`` when there is none)."""
    post = run.postprocess(metrics.get("checkpoint", "best"))
    return post.to_dict() if post is not None else {}


def _label_operating_points(run: Run, metrics: dict[str, Any]) -> str:
    """Multilabel: the threshold in use for each label, where it came from, and its metrics on this split."""
    post = stored_postprocess(run, metrics)
    chosen = (post.get("operating_points") or {}).get("per_label") or {}
    dec = metrics.get("decision") or {}
    applied = (metrics.get("operating_points") or {}).get("per_label") or {}
    rows = []
    for name, d in (dec.get("per_label") or {}).items():
        rule = (dec.get("rules") or {}).get(name, "?")
        entry = chosen.get(name) or {}
        val = (entry.get(rule) or {}).get("val") or {}
        prov = escape(entry["fallback"]) if "fallback" in entry else (
            f"chosen on val (n = {fmt(entry.get('n'))}, {fmt(entry.get('n_positive'))} positive)"
            + (f"<br><small>val sens {fmt(val.get('sensitivity'))}, spec {fmt(val.get('specificity'))}</small>"
               if val else ""))
        here = (applied.get(name) or {}).get(rule) or {}
        cells = [ci_cell(here[k]) if isinstance(here.get(k), dict) else fmt(d.get(k))
                 for k in ("sensitivity", "specificity", "ppv", "npv")]
        rows.append([escape(name), escape(rule), f'<span title="{d["threshold"]!r}">{fmt_threshold(d["threshold"])}</span>',
                     prov, *cells, fmt(d.get("f1"))])
    if not rows:
        return "<p>No per-label operating points were recorded.</p>"
    split = escape(metrics.get("split", ""))
    return (f"<p>One threshold per label, rule <b>{escape(dec.get('operating_point', '?'))}</b>, chosen on the "
            f"validation split and applied unchanged to {split}; a case's findings are the labels with p &ge; their "
            f"threshold (none: &ldquo;no finding&rdquo;). Values are on {split}"
            + (" with 95% CIs (stratified bootstrap per label)" if applied else "") + ".</p>"
            + '<div class="wide">' + table(["label", "rule", "threshold", "provenance", "sensitivity", "specificity",
                                             "PPV", "NPV", "F1"], rows) + "</div>"
            + f"<p>At these thresholds: subset accuracy {fmt(dec.get('subset_accuracy'))}, Hamming accuracy "
              f"{fmt(dec.get('hamming_accuracy'))}, macro F1 {fmt(dec.get('macro_f1'))}; "
              f"{fmt(dec.get('n_no_finding'))} of {fmt(dec.get('n'))} cases with no finding.</p>")


def _label_counts(metrics: dict[str, Any]) -> str:
    """Multilabel: per-label counts at the thresholds in use (instead of a confusion matrix)."""
    per = (metrics.get("decision") or {}).get("per_label") or {}
    if not per:
        return "<p>Confusion matrices are not shown for multilabel tasks (see per-label metrics).</p>"
    rows = [[escape(c), fmt_threshold(d["threshold"]), *(fmt(d.get(k)) for k in ("tp", "fp", "fn", "tn"))]
            for c, d in per.items()]
    return ("<p>Each label is its own yes/no decision at its own threshold: true/false positives and negatives "
            "per label (a multilabel task has no single confusion matrix).</p>"
            + table(["label", "threshold", "TP", "FP", "FN", "TN"], rows))


def _binary_confusions(run: Run, metrics: dict[str, Any], labels: Any, probs: Any) -> dict[str, np.ndarray]:
    """Binary: the confusion matrix at each operating point (``{}`` without labels and probabilities)."""
    if labels is None or probs is None:
        return {}
    pos = run.dataset.positive_index if run.dataset.positive_index is not None else 1
    ops = {k: v["threshold"] for k, v in operating_points(metrics).items()}
    if not ops and "threshold" in metrics:
        ops = {"threshold": metrics["threshold"]}
    y, p = np.asarray(labels), np.asarray(probs)[:, pos]
    return {f"{name} (threshold {fmt_threshold(t)})": confusion_counts(y, np.where(p >= t, pos, 1 - pos), 2)
            for name, t in ops.items()}


def _confusions(run: Run, metrics: dict[str, Any], labels: Any, probs: Any) -> str:
    names = list(run.dataset.class_names)
    if run.dataset.task == "binary":
        mats = _binary_confusions(run, metrics, labels, probs)
        if not mats:
            return '<p class="muted">No predictions to build confusion matrices from.</p>'
    elif "confusion_matrix" in metrics:
        mats = {"arg-max class": np.asarray(metrics["confusion_matrix"])}
    else:
        return _label_counts(metrics)
    out = ("<p>Rows are the true class; each cell gives its count and the fraction of its row (per-class recall "
           "on the diagonal).</p><div class=\"cms\">")
    for title, cm in mats.items():
        out += f'<div class="cm"><h3>{escape(title)}</h3>{confusion_table(cm, names)}</div>'
    return out + "</div>"


def _calibration(out_dir: Path, metrics: dict[str, Any]) -> str:
    cal = metrics.get("calibration") or {}
    if "error" in cal:
        return f'<div class="banner">Calibration report unavailable: {escape(cal["error"])}</div>'
    keys = ("ece", "mce", "brier", "nll")
    rows = [[k.upper() if k != "brier" else "Brier", fmt((cal.get("before") or {}).get(k), 4),
             fmt((cal.get("after") or {}).get(k), 4)] for k in keys]
    t = cal.get("temperature", (metrics.get("postprocess") or {}).get("temperature"))
    how = ("sigmoid(logits / T) for every label, one T shared by all labels" if metrics.get("task") == "multilabel"
           else "softmax(logits / T)")
    return (f"<p>Temperature T = <b>{fmt(t, 4)}</b> (fitted on val; probabilities = {how}). "
            f"Lower is better for every score; {fmt(cal.get('n_bins'))} bins.</p>"
            + '<div class="figs"><div>' + table(["score", "before (T = 1)", "after (T)"], rows) + "</div>"
            + figure(out_dir / "reliability.png", "Reliability diagram") + "</div>")


def _errors(out_dir: Path) -> str:
    root = out_dir / "gradcam"
    files = sorted(root.rglob("*.png")) if root.is_dir() else []
    if not files:
        return (f"<p>No Grad-CAM gallery for this evaluation. Produce one with <code>{escape(GRADCAM_HINT)}</code> "
                "and re-open this report.</p>")
    shown = files[:MAX_GALLERY]
    more = f" (first {MAX_GALLERY} of {len(files)})" if len(files) > MAX_GALLERY else ""
    return (f"<p>Grad-CAM overlays of misclassified images{more}.</p><div class=\"gallery\">"
            + "".join(figure(f, f.relative_to(root).as_posix()) for f in shown) + "</div>")


def write_report(run: Run, split: str, metrics: dict[str, Any], out_dir: str | Path, *, labels: Any = None,
                 probs: Any = None) -> Path:
    """Write ``out_dir/report.html`` (self-contained) for ``metrics`` of ``run`` on ``split``.

    ``labels`` and ``probs`` (the split's class indices and calibrated probabilities, as evaluated) give a
    binary task its confusion matrix at each operating point; without them that section says there are none.
    """
    out_dir = Path(out_dir)
    cfg_file = run.path / "config.yaml"
    cfg_text = cfg_file.read_text() if cfg_file.is_file() else "(config.yaml not found)"
    title = f"{run.dataset.name} · {run.model_spec.architecture} · {split}"
    with tempfile.TemporaryDirectory() as tmp:
        sections = [
            ("data", "Data", _data(run)),
            ("config", "Configuration", f"<pre>{escape(cfg_text)}</pre>"),
            ("training", "Training", _training(run, out_dir, metrics, Path(tmp))),
            ("metrics", "Metrics", _metrics(metrics, split)),
            ("operating-points", "Operating points", _operating_points(run, out_dir, metrics)),
            ("confusion", "Per-label counts" if run.dataset.task == "multilabel" else "Confusion matrices",
             _confusions(run, metrics, labels, probs)),
            ("calibration", "Calibration", _calibration(out_dir, metrics)),
            *([("subgroups", "Subgroups", _subgroups(metrics))] if metrics.get("subgroups") else []),
            ("errors", "Errors (Grad-CAM)", _errors(out_dir)),
        ]
    nav = "".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name, _ in sections)
    body = (f"<header><h1>{escape(title)}</h1><p class=\"sub\">Run <code>{escape(run.path.name)}</code> · "
            f"{escape(run.dataset.task)} · n = {fmt(metrics.get('n'))} · checkpoint {escape(metrics.get('checkpoint'))}"
            f"</p><div class=\"banner notice\">{escape(NOT_CLINICAL)}</div><nav>{nav}</nav></header>"
            + "".join(section(name, html, sid=sid) for sid, name, html in sections)
            + footer(f" <b>{escape(NOT_CLINICAL)}</b>"))
    path = out_dir / "report.html"
    atomic_write_text(path, page(title, body))
    return path
