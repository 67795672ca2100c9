"""The external-validation report (``validate-<name>/report.html``, the look of the evaluation report) and the
"External validation" section of a model card, from ``medcls validate``'s metrics alone."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text
from .kit import (
    ci_cell,
    escape,
    figure,
    fmt,
    fmt_ci,
    fmt_percent,
    fmt_threshold,
    footer,
    md_table,
    page,
    section,
    table,
)

NOT_CLINICAL = ("Not for clinical use: a research model. External figures describe this site's cases only; a "
                "recalibration fitted here is a model update to be validated again before any use.")
FIGURES = {"auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity", "accuracy": "accuracy",
           "balanced_accuracy": "balanced accuracy", "citl": "calibration-in-the-large (0)",
           "slope": "calibration slope (1)", "oe": "O/E (1)", "ici": "ICI", "ece": "ECE"}


def figure_label(key: str) -> str:
    """``citl[benign]`` -> ``calibration-in-the-large (0) · benign`` (a class against the rest)."""
    base, _, cls = key.partition("[")
    return FIGURES.get(base, base) + (f" · {cls.rstrip(']')}" if cls else "")


def figure_keys(figs: dict[str, Any]) -> list[str]:
    """The figures present, in the order of :data:`FIGURES` (then class by class)."""
    order = list(FIGURES)
    return sorted(figs, key=lambda k: (order.index(k.partition("[")[0]) if k.partition("[")[0] in order else 99,
                                       k.partition("[")[2]))


def _diff(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if not d else {"value": d.get("diff"), "low": d.get("low"), "high": d.get("high")}


# ------------------------------------------------------------------------------------------------ Markdown
def external_validation_lines(m: dict[str, Any], where: str = "") -> list[str]:
    """The "External validation" section of a model card (TRIPOD+AI 12e-f, 16, 20c, 23a-b, 24)."""
    src, ext = m["source"], m["external"]["figures"]
    inside, diff = (m.get("internal") or {}).get("figures") or {}, m.get("difference") or {}
    head = ["figure", "external (95% CI)", *(["internal (95% CI)", "external − internal"] if inside else [])]
    rows = [[figure_label(k), fmt_ci(ext.get(k)), *([fmt_ci(inside.get(k)), fmt_ci(_diff(diff.get(k)))]
                                                     if inside else [])] for k in figure_keys(ext)]
    mix = m["case_mix"]
    dev = (mix.get("prevalence_development") or {}).get("train", {})
    ood = mix.get("ood") or {}
    shares = "; ".join(f"{c} {fmt_percent(v, 1)} here, {fmt_percent(dev.get(c), 1)} in development (train)"
                       for c, v in mix["prevalence_here"].items())
    counts = ", ".join(f"{n} {c}" for c, n in m["per_class"].items())
    L = ["## External validation", "",
         f"- **Data:** `{src['source']}` ({src['split']}), {m['n']} cases ({counts})"
         f"{f'; {where}' if where else ''}; {src['n_dropped']} dropped by the label map, {src['n_unreadable']} "
         "unreadable",
         f"- **Prevalence:** {shares}",
         f"- **OOD gate:** {fmt_percent(ood.get('flagged_here'), 1)} flagged here, "
         f"{fmt_percent(ood.get('flagged_development_val'), 1)} of the development validation set"
         if ood.get("available") else "- **OOD gate:** not available (a run directory)",
         f"- **Operating point:** {m['model']['operating_point']} at {fmt_threshold(m['model']['threshold'])}"
         if m["task"] == "binary" else "- **Decision:** the most probable class", "",
         *md_table(head, rows), ""]
    L += [f"- **Warning:** {w}" for w in m.get("warnings", [])]
    if m.get("sites"):
        s = m["sites"]
        het = s["heterogeneity"].get("auc") or {}
        L += [f"- **Sites ({s['column']}):** {len(s['sites'])}; AUC I² = {fmt_percent(het.get('i2'))}, "
              f"smallest `{s['smallest']}`"]
    if m.get("recalibration"):
        L += ["", *recalibration_lines(m["recalibration"])]
    return [*L, ""]


def recalibration_lines(r: dict[str, Any]) -> list[str]:
    """Model updating: what was fitted, on which cases, and the held-out figures before and after."""
    f = r["fitted_on"]
    rows = [[figure_label(k), fmt_ci(r["before"].get(k)), fmt_ci(r["after"].get(k))] for k in figure_keys(r["before"])]
    return ["### Model updating (recalibration)", "",
            f"- **Method:** {r['method']}: {update_text(r)}",
            f"- **Fitted on:** {f['n']} cases (per class {f['per_class']}) of `{f['source']}`, {fmt_percent(f['fraction'])} "
            f"per class drawn with seed {f['seed']}; reported on the other {r['held_out']['n']} cases",
            f"- **Operating point:** threshold {fmt_threshold(r['threshold']['before'])} → "
            f"{fmt_threshold(r['threshold']['after'])} (the same decisions on the new scale)", "",
            *md_table(["held-out figure", "before (95% CI)", "after (95% CI)"], rows), ""]


def update_text(r: dict[str, Any]) -> str:
    """What the update does to the probabilities, in words."""
    u = r["update"]
    if r["method"] == "temperature":
        return f"log-odds divided by {fmt(1 / u['slope'], 4)} (a new temperature on top of the one fitted on validation)"
    return (f"logit p' = {fmt(u['intercept'], 4)} + {fmt(u['slope'], 4)} × logit p (after the temperature fitted on "
            "validation)")


def validation_card(m: dict[str, Any], base: str | None) -> str:
    """The model card of a validation: the run's own card (when there is one) and the external section."""
    head = base.rstrip() + "\n\n" if base else (f"# Model card: {m['model']['architecture']} "
                                                f"({', '.join(m['model']['classes'])})\n\n")
    return head + "\n".join(external_validation_lines(m))


# ------------------------------------------------------------------------------------------------ HTML
def _figures_table(m: dict[str, Any]) -> str:
    ext, inside = m["external"]["figures"], (m.get("internal") or {}).get("figures") or {}
    diff = m.get("difference") or {}
    head = ["figure (ideal)", "external", *(["internal", "external − internal"] if inside else [])]
    rows = [[escape(figure_label(k)), ci_cell(ext.get(k)), *([ci_cell(inside.get(k)), ci_cell(_diff(diff.get(k)))]
                                                             if inside else [])] for k in figure_keys(ext)]
    where = (f"Internal: the run's own test predictions ({escape(m['internal']['from'])}, n = {m['internal']['n']})."
             if inside else "No internal figures: " + escape(m["notes"][-1] if m["notes"] else ""))
    counts = ", ".join(f"{n} {escape(c)}" for c, n in m["per_class"].items())
    return (f"<p>{m['n']} cases ({counts}); {m['n_bootstrap']} bootstrap resamples (cases drawn from "
            f"all, not within each class, so the prevalence varies as it would). {where}</p>" + table(head, rows))


def _operating_point(m: dict[str, Any]) -> str:
    tr = m["external"].get("threshold_transfer") or {}
    rows = []
    for name, e in tr.items():
        for k in ("sensitivity", "specificity"):
            d = e.get(k) or {}
            rows.append([escape(name), fmt_threshold(e["threshold"]), k, fmt(d.get("chosen")), ci_cell(d),
                         escape("; ".join(e["flags"])) or "holds"])
    if not rows:
        return ("<p>No operating points were stored with this model.</p>" if m["task"] == "binary" else
                "<p>A multiclass model decides by the most probable class: no threshold to transfer.</p>")
    return ("<p>Each stored operating point (chosen on the development validation split) applied here: "
            "flagged when its validation value falls outside this site's CI.</p>"
            + table(["operating point", "threshold", "metric", "on val", "here (95% CI)", "verdict"], rows))


def _case_mix(m: dict[str, Any]) -> str:
    mix = m["case_mix"]
    classes = m["model"]["classes"]
    dev = mix.get("prevalence_development") or {}
    rows = [["here", fmt(m["n"])] + [fmt_percent(mix["prevalence_here"].get(c), 1) for c in classes]]
    rows += [[f"development {s}", fmt(v.get("n"))] + [fmt_percent(v.get(c), 1) for c in classes]
             for s, v in dev.items()]
    out = "<h3>Prevalence</h3>" + table(["set", "n", *classes], rows)
    img_rows = []
    for k in ("height", "width", "intensity_mean", "intensity_std"):
        here, d = mix["images_here"].get(k) or {}, (mix.get("images_development") or {}).get(k) or {}
        img_rows.append([k, *(fmt(here.get(q), 3) for q in ("q1", "median", "q3")),
                         *(fmt(d.get(q), 3) for q in ("q1", "median", "q3"))])
    out += ("<h3>Images</h3><p>Raw images before preprocessing (intensities scaled to [0, 1]); development: up to "
            "300 test images of the run's own data, when it is on this machine.</p>"
            + table(["statistic", "here Q1", "median", "Q3", "development Q1", "median", "Q3"], img_rows))
    return out + "<h3>Out-of-distribution gate</h3>" + _ood(mix.get("ood") or {})


def _ood(ood: dict[str, Any]) -> str:
    if not ood.get("available"):
        return f"<p>{escape(ood.get('note', 'not available'))}</p>"
    q = ["0.05", "0.25", "0.5", "0.75", "0.95"]
    rows = [["here", fmt_percent(ood.get("flagged_here"), 1), *(fmt(ood["score_quantiles_here"][k]) for k in q)]]
    if "score_quantiles_development_val" in ood:
        rows.append(["development val", fmt_percent(ood.get("flagged_development_val"), 1),
                     *(fmt(ood["score_quantiles_development_val"][k]) for k in q)])
    tests = (ood.get("drift") or {}).get("tests") or []
    drift = table(["test", "statistic", "p", "here", "reference"],
                  [[escape(t["test"]), fmt(t["statistic"]), fmt(t["p_value"], 4), escape(t["recent"]),
                    escape(t["reference"])] for t in tests]) if tests else ""
    return (f"<p>Threshold {fmt(ood['threshold'])} (Mahalanobis distance of the features).</p>"
            + table(["set", "flagged", *(f"score q{k}" for k in q)], rows) + drift)


def _sites(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = m.get("sites")
    if not s:
        return []
    het = [[escape(figure_label(k)), fmt(v.get("sites")), fmt(v.get("pooled")), fmt(v.get("q")), fmt(v.get("p"), 4),
            fmt_percent(v.get("i2")), fmt(v.get("tau2"), 4)] for k, v in s["heterogeneity"].items()]
    overview = (f"<p>Sites by <code>{escape(s['column'])}</code>; small: {escape(s['small_rule'])}; smallest: "
                f"<b>{escape(s['smallest'])}</b>. {escape(s['heterogeneity_method'])}.</p>"
                + table(["figure", "sites", "pooled", "Q", "p", "I²", "tau²"], het))
    out = [("sites", "Sites", overview)]
    for k, (name, v) in enumerate(s["sites"].items()):
        tag = ' <span class="tag">small</span>' if v["small"] else ""
        counts = ", ".join(f"{n} {escape(c)}" for c, n in v["per_class"].items())
        body = f"<p>n = {v['n']} ({counts}){tag}</p>"
        body += (table(["figure", "value (95% CI)"], [[escape(figure_label(f)), ci_cell(v["figures"].get(f))]
                                                      for f in figure_keys(v["figures"])]) if "figures" in v
                 else f"<p>{escape(v.get('note', ''))}</p>")
        out.append((f"site-{k}", f"Site {name}", body))
    return out


def _recalibration(r: dict[str, Any], tmp: Path) -> str:
    from .plots import plot_smoothed_calibration

    rows = [[escape(figure_label(k)), ci_cell(r["before"].get(k)), ci_cell(r["after"].get(k)),
             ci_cell(_diff((r.get("change") or {}).get(k)))] for k in figure_keys(r["before"])]
    f = r["fitted_on"]
    return (f"<div class=\"banner\">Model updated on external data ({escape(r['method'])}): "
            f"{escape(update_text(r))}, fitted on {f['n']} cases "
            f"({fmt_percent(f['fraction'])} per class, seed {f['seed']}) of <code>{escape(f['source'])}</code>; "
            f"figures below are on the other {r['held_out']['n']} cases. Threshold "
            f"{fmt_threshold(r['threshold']['before'])} → {fmt_threshold(r['threshold']['after'])}.</div>"
            + table(["held-out figure", "before", "after", "after − before"], rows)
            + (figure(plot_smoothed_calibration(tmp / "recalibrated.png", {
                f"{k} {r['method']} recalibration": c for k, c in r["calibration_curves"].items()}),
                "Held-out cases: smoothed calibration before and after") if r.get("calibration_curves") else "")
            + "".join(f"<p class=\"muted\">{escape(n)}</p>" for n in r.get("notes", [])))


def _curves(m: dict[str, Any], tmp: Path) -> str:
    from .plots import plot_decision_curve, plot_smoothed_calibration

    ext = m["external"]
    if m["task"] != "binary":
        cal = plot_smoothed_calibration(tmp / "calibration.png", ext["calibration_curves"])
        return ("<p>Each class against the rest.</p><div class=\"figs\">"
                + figure(cal, "Smoothed calibration curves with their 95% bands") + "</div>")
    cal = plot_smoothed_calibration(tmp / "calibration.png", {"external": ext["calibration_curve"]})
    dec = plot_decision_curve(tmp / "decision.png", ext["decision_curve"], positive=m["model"]["positive_class"],
                              thresholds={m["model"]["operating_point"]: m["model"]["threshold"]})
    ici = ext["ici"]
    return (f"<p>ICI {fmt(ici['ici'])}, E50 {fmt(ici['e50'])}, E90 {fmt(ici['e90'])} (Austin &amp; Steyerberg "
            "2019).</p><div class=\"figs\">" + figure(cal, "Smoothed calibration curve with its 95% band")
            + figure(dec, "Decision curve") + "</div>")


def render_validation(m: dict[str, Any]) -> str:
    """The whole report page of a validation's metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        sections = [("figures", "Discrimination and calibration", _figures_table(m)),
                    ("curves", "Calibration curve and decision curve", _curves(m, Path(tmp))),
                    ("operating-point", "Operating point", _operating_point(m)),
                    ("case-mix", "Case mix and shift", _case_mix(m)),
                    *([("recalibration", "Model updating", _recalibration(m["recalibration"], Path(tmp)))]
                      if m.get("recalibration") else []),
                    *_sites(m)]
    warn = "".join(f'<div class="banner">{escape(w)}</div>' for w in m.get("warnings", []))
    notes = "".join(f"<li>{escape(n)}</li>" for n in m.get("notes", []))
    nav = "".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name, _ in sections if not sid.startswith("site-"))
    title = f"External validation · {m['model']['architecture']} on {m['source']['source']}"
    body = (f"<header><h1>{escape(title)}</h1><p class=\"sub\">{escape(m['model']['kind'])} "
            f"<code>{escape(m['model']['path'])}</code> · checkpoint {escape(m['model']['checkpoint'])} · n = "
            f"{m['n']}</p><div class=\"banner notice\">{escape(NOT_CLINICAL)}</div>{warn}<nav>{nav}</nav></header>"
            + "".join(section(name, html, sid=sid) for sid, name, html in sections)
            + (section("Notes", f"<ul>{notes}</ul>") if notes else "") + footer())
    return page(title, body)


def write_validation_report(m: dict[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, render_validation(m))
    return path
