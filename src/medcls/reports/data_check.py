"""The report of a data check (:mod:`medcls.data.check`): ``report.json``, a self-contained ``report.html``
and a terminal summary.

``report.html`` is built with :mod:`.kit`, self-contained: CSS inline and every thumbnail a base64 PNG, so
it opens offline and can be archived with ``report.json``. Text from the data (ids, class names, errors)
is HTML-escaped.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..data.check.summary import DataReport, plural
from ..data.table import ImageTable
from ..utils import atomic_write_json, atomic_write_text, check_new_output, new_unique_dir
from .kit import escape, figure, fmt, footer, page, png, section, table

MAX_SHOWN = 24  # leaked pairs shown as thumbnails per category


def new_report_dir(root: str | Path, name: str) -> Path:
    """Create ``root/<name>-<YYYYmmdd-HHMMSS>[-k]``; an existing directory is never reused."""
    return new_unique_dir(root, name, "report directory")


def check_new(output: str | Path | None) -> None:
    """Raise when ``output`` exists (call before the work: reports are never overwritten)."""
    if output is not None:
        check_new_output(output, "data reports", hint="choose another --output")


def write_data_check(report: DataReport, output: str | Path | None = None, *, root: str | Path = "data-check") -> Path:
    """Write ``report.json`` and ``report.html`` into ``output`` (must not exist) or a new directory under ``root``
    (``root/<dataset>-<time>``); returns the directory."""
    if output is not None:
        check_new(output)
        out = Path(output)
        try:
            out.mkdir(parents=True)
        except FileExistsError:
            check_new(out)
    else:
        out = new_report_dir(root, report.dataset)
    atomic_write_json(out / "report.json", report.to_dict())
    atomic_write_text(out / "report.html", render_html(report))
    return out


# ----------------------------------------------------------------------------------------------- HTML

def _thumb(images: ImageTable | None, row: int, caption: str, size: int = 112) -> str:
    """A captioned thumbnail of ``images[row]`` (scaled to 8 bits), or the error's name when it cannot be read."""
    from PIL import Image

    try:
        arr = np.asarray(images.load(row))  # type: ignore[union-attr]
        if arr.dtype != np.uint8:
            a = arr.astype(np.float64)
            lo, hi = float(a.min()), float(a.max())
            arr = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * 255 / (hi - lo)).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3] if arr.ndim == 3 else arr))
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        src = png(buf.getvalue())
    except Exception as e:  # a thumbnail must not stop the report
        src = f'<p class="muted">({escape(type(e).__name__)})</p>'
    return figure(src, caption, cls="thumb")


def _pairs_html(report: DataReport, dups: dict[str, Any], what: str) -> str:
    """Per pair of splits, the first ``MAX_SHOWN`` duplicate pairs between them, side by side."""
    out = []
    for key, v in dups["cross_split"].items():
        if not v["pairs"]:
            continue
        shown = v["listed"][:MAX_SHOWN]
        cards = "".join(
            f'<div class="pair"><div>{_thumb(report.tables.get(p["split_a"]), p["index_a"], p["id_a"])}'
            f'{_thumb(report.tables.get(p["split_b"]), p["index_b"], p["id_b"])}</div>'
            f'<small class="muted">phash distance {p["distance"]}, correlation {fmt(p["correlation"], 4)}</small></div>'
            for p in shown)
        more = f" (showing {len(shown)})" if len(shown) < v["pairs"] else ""
        out.append(f"<h3>{escape(key)}: {plural(v['pairs'], what + ' pair')}{more}</h3><div class=\"pairs\">{cards}</div>")
    return "".join(out)


def _sharing(report: DataReport) -> tuple[str, str, str]:
    """Tables of duplicates across splits (with the leaked pairs side by side), within splits, and shared ids."""
    ex, nd, ov = report.exact_duplicates, report.near_duplicates, report.group_overlap
    cross = table(["splits", "exact pairs", "exact groups", "near pairs", "near groups", "shared patients/groups"],
                  [[k, ex["cross_split"][k]["pairs"], ex["cross_split"][k]["clusters"], nd["cross_split"][k]["pairs"],
                    nd["cross_split"][k]["clusters"], "—" if not ov or k not in ov else ov[k]["groups"]]
                   for k in ex["cross_split"]], text=True)
    within = table(["split", "exact pairs", "exact copies", "near pairs", "near copies"],
                   [[s, *(d["within_split"][s][k] for d in (ex, nd) for k in ("pairs", "copies"))] for s in report.counts],
                   text=True)
    groups = "".join(
        f"<h3>{escape(k)}: {plural(v['groups'], 'shared id')}</h3>"
        + table(["patient/group", *[x for x in v["examples"][0] if x != "group"]],
                [[e["group"], *[", ".join(ids) for x, ids in e.items() if x != "group"]] for e in v["examples"]],
                text=True)
        for k, v in (ov or {}).items() if v["groups"]) or "<p class=\"muted\">No shared ids (or no ids in this source).</p>"
    pairs = _pairs_html(report, ex, "exact duplicate") + _pairs_html(report, nd, "near-duplicate")
    return cross + pairs, within, groups


def render_html(report: DataReport) -> str:
    """The self-contained ``report.html`` of a data check."""
    c, img = report.counts, report.images
    counts = table(["split", "images", *report.classes, "decoded"],
                   [[s, v["n"], *v["per_class"].values(), report.checked.get(s, 0)] for s, v in c.items()], text=True)
    props = '<div class="row">' + "".join(table([name, "images"], list(img[key].items()), text=True) for key, name in
                                          (("modes", "mode"), ("bit_depth", "bits"), ("sizes", "width x height")))
    cross, within, groups = _sharing(report)
    unread = ("<ul>" + "".join(f"<li><code>{escape(u['id'])}</code> ({escape(u['split'])}): {escape(u['error'])}</li>"
                                for u in report.unreadable) + "</ul>") if report.unreadable else "<p>None.</p>"
    samples = "".join(f"<h3>{escape(s)}</h3>" + "".join(
        f'<div class="row"><b style="width:120px">{escape(name)}</b>'
        + "".join(_thumb(report.tables.get(s), r, report.tables[s].ids[r]) for r in rows) + "</div>"
        for name, rows in per.items()) for s, per in report.samples.items())
    bullets = "".join(f"<li>{escape(w)}</li>" for w in report.warnings) or "<li>None.</li>"
    banner = ('<div class="banner notice">Leakage found: ' + "; ".join(escape(r) for r in report.leakage_reasons)
              + "</div>" if report.leakage else '<div class="banner ok">No leakage found between splits.</div>')
    st = report.settings
    sections = [
        ("Warnings", f"<ul>{bullets}</ul>"), ("Counts per split and class", counts),
        ("Images", props + f"</div><p class=\"muted\">{img['distinct_sizes']} distinct sizes.</p>"),
        ("Duplicates and shared patients across splits", cross),
        ("Duplicates within splits", within), ("Patient/group overlap", groups), ("Unreadable files", unread),
        ("Samples per class", samples),
        ("Method", f"<ul><li>Exact: {escape(st['exact_duplicate_rule'])}</li><li>Near: {escape(st['near_duplicate_rule'])}"
                   f"</li><li>{escape(st['hash'])}; {escape(st['search'])}</li></ul>"
                   + "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>"),
    ]
    title = f"Data check · {report.dataset}"
    return page(title, f"<h1>{escape(title)}</h1><p class=\"sub\"><code>{escape(report.source)}</code> · "
                       f"{escape(report.task)} · {sum(v['n'] for v in c.values())} images</p>{banner}"
                + "".join(section(h, b) for h, b in sections) + footer())


# ----------------------------------------------------------------------------------------------- terminal

def print_summary(report: DataReport, out_dir: Path | None = None, console=None) -> None:
    """A compact rich summary: counts, image formats, leakage per split pair, warnings."""
    from rich.console import Console
    from rich.markup import escape as markup_escape
    from rich.table import Table

    con = console or Console()
    t = Table(title=markup_escape(f"{report.dataset} · {report.source}"))
    rows = {s: [v["n"], *v["per_class"].values(), report.checked.get(s, 0)] for s, v in report.counts.items()}
    names = ["images", *report.classes, "decoded"]
    if len(report.classes) <= 5:  # splits as rows; many classes: classes as rows
        header, rows = ["split", *names], [[s, *v] for s, v in rows.items()]
    else:
        header, rows = ["", *rows], [[name, *(v[k] for v in rows.values())] for k, name in enumerate(names)]
    for k, col in enumerate(header):
        t.add_column(col, justify="left" if k == 0 else "right")
    for r in rows:
        t.add_row(*map(str, r))
    con.print(t)
    img = report.images
    modes = ", ".join(f"{k} {v}" for k, v in img["modes"].items())
    bits = ", ".join(f"{k}-bit {v}" for k, v in img["bit_depth"].items())
    sizes = ", ".join(f"{k} ({v})" for k, v in list(img["sizes"].items())[:3])
    con.print(markup_escape(f"images: {modes}; {bits}; sizes {sizes}" + (" …" if img["distinct_sizes"] > 3 else "")))
    ex, nd, ov = report.exact_duplicates, report.near_duplicates, report.group_overlap or {}
    lt = Table(title="across splits")
    for col in ("splits", "exact pairs (groups)", "near pairs (groups)", "shared patients"):
        lt.add_column(col, justify="left" if col == "splits" else "right")
    for k in ex["cross_split"]:
        e, n = ex["cross_split"][k], nd["cross_split"][k]
        lt.add_row(k, f"{e['pairs']} ({e['clusters']})", f"{n['pairs']} ({n['clusters']})",
                   str(ov[k]["groups"]) if k in ov else "—")
    con.print(lt)
    for w in report.warnings[:20]:
        con.print(f"[yellow]warning[/]: {markup_escape(w)}", highlight=False)
    if len(report.warnings) > 20:
        con.print(f"… {len(report.warnings) - 20} more warnings in report.json")
    con.print("[bold red]LEAKAGE FOUND[/]" if report.leakage else "[green]no leakage between splits[/]")
    if out_dir is not None:
        con.print(markup_escape(f"report written to {out_dir}/report.json and report.html"), highlight=False)
