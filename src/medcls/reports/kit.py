"""The one kit every report is built with: a self-contained HTML page and its stylesheet, sections, tables,
embedded PNG figures, escaping, and the number formats (values, CIs, thresholds, percentages, Markdown tables).

Pages have no external resources: the CSS is inline and every image a base64 ``data:`` URI, so a report
opens offline, can be mailed or archived, and prints cleanly. Text taken from runs or data goes through
:func:`escape`; :func:`table` cells are HTML unless ``text=True``.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DASH = "—"  # what an undefined number (None, nan, inf) is shown as

CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d2330;
 background:#f4f6f9;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:36px}
h3{font-size:16px;margin:18px 0 6px}
.sub{color:#5a6472;margin:0 0 12px}
ul{padding-left:22px}li{margin:2px 0}code{font-size:13px}
.banner{background:#fff4e5;border:1px solid #f0b429;border-left:6px solid #d9822b;padding:10px 14px;margin:12px 0;
 border-radius:4px}
.ok{background:#eef7ee;border-color:#9ccc9f;border-left-color:#2e7d32}
.notice{background:#fdecea;border-color:#e6a4a0;border-left-color:#c0392b;font-weight:600}
nav{font-size:14px;margin:10px 0 0}nav a{margin-right:14px;color:#2459a8;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px;min-width:40%}
th,td{padding:5px 10px;border:1px solid #dde3ea;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#e9eef5}tbody tr:nth-child(even){background:#f6f8fb}
tr.selected td{background:#e8f3ea}tr.selected td:first-child{font-weight:600}
td small{color:#5a6472}td small.ci{white-space:nowrap}.wide{overflow-x:auto}.wide table{font-size:13px;width:100%}
.wide td:nth-child(3),.wide td:nth-child(4),.wide th:nth-child(3),.wide th:nth-child(4){text-align:left}
.tag{display:inline-block;font-size:11px;padding:1px 6px;border-radius:8px;background:#2e7d32;color:#fff;
 margin-left:6px}
pre{background:#f6f8fb;border:1px solid #dde3ea;padding:10px;font-size:12px;overflow:auto;max-height:560px}
img{max-width:100%;height:auto}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.figs figure{margin:0;flex:1 1 300px;max-width:520px}
table.confusion td.cmc{text-align:center;min-width:64px;font-variant-numeric:tabular-nums}
table.confusion td.cmc small{color:inherit;opacity:.85}
.cms{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:12px}
.cm{border:1px solid #dde3ea;border-radius:4px;padding:4px 10px 8px}.cm h3{margin:6px 0}.cm figure{flex:1 1 200px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px}
.gallery figure{margin:0}figcaption{font-size:12px;color:#5a6472;word-break:break-all}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin-bottom:8px}.row table{min-width:0}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px}
.pair{border:1px solid #dde3ea;border-radius:4px;padding:6px}.pair div{display:flex;gap:6px}
figure.thumb{margin:0;width:104px}.pair figure.thumb{width:50%}
.thumb img{width:100%;image-rendering:pixelated;background:#000}.thumb figcaption{font-size:11px}
.muted{color:#5a6472}.warn{color:#a4420c;font-size:12px;text-align:left;display:inline-block}
footer{margin-top:40px;border-top:1px solid #dde3ea;padding-top:10px;font-size:13px;color:#5a6472}
@media print{body{background:#fff}main{padding:0;max-width:none}nav{display:none}
 section,figure,table,.cm{break-inside:avoid}pre{max-height:none;white-space:pre-wrap}}
"""


# ----------------------------------------------------------------------------------------------- numbers

def _defined(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, digits: int = 3, *, dash: str = DASH, signed: bool = False) -> str:
    """A number as text: floats with ``digits`` decimals (``signed``: with a sign, ``+0.012``), integers as they
    are, ``dash`` for None, nan and infinities; booleans and any other value as escaped text."""
    if v is None:
        return dash
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, numbers.Integral):
        return f"{int(v):+d}" if signed else str(int(v))
    if isinstance(v, numbers.Real):
        return f"{float(v):{'+' if signed else ''}.{digits}f}" if math.isfinite(v) else dash
    return escape(v)


def fmt_ci(d: Any, digits: int = 3, *, value: bool = True, style: str = "brackets", dash: str = DASH,
           signed: bool = False) -> str:
    """A ``{value, low, high}`` dict (a bootstrap or DeLong CI) as text.

    ``style="brackets"``: ``0.912 [0.880, 0.940]``; ``style="range"``: ``0.912 (0.880–0.940)``. ``value=False``
    gives the interval alone (``[0.880, 0.940]``, ``0.880–0.940``); ``signed``: the value of a difference with its
    sign (``+0.012 [-0.010, 0.030]``). An interval without a defined bound is left out: the value alone, or
    ``dash`` when that leaves nothing.
    """
    if style not in ("brackets", "range"):
        raise ValueError(f"style must be 'brackets' or 'range', got {style!r}")
    d = d if isinstance(d, Mapping) else {}
    shown = fmt(d.get("value"), digits, dash=dash, signed=signed)
    if not (_defined(d.get("low")) or _defined(d.get("high"))):
        return shown if value else dash
    low, high = fmt(d.get("low"), digits, dash=dash), fmt(d.get("high"), digits, dash=dash)
    if style == "brackets":
        return f"{shown} [{low}, {high}]" if value else f"[{low}, {high}]"
    return f"{shown} ({low}–{high})" if value else f"{low}–{high}"


def fmt_threshold(t: float, digits: int = 4) -> str:
    """A decision threshold with ``digits`` significant digits (``0.4127``), as every report and table prints it."""
    return f"{float(t):.{digits}g}"


def fmt_percent(v: Any, digits: int = 0, *, dash: str = DASH) -> str:
    """A fraction as a percentage (``0.5`` -> ``50%``); ``dash`` when undefined."""
    return f"{float(v):.{digits}%}" if _defined(v) else dash


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table (cells are taken as they are)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


# ----------------------------------------------------------------------------------------------- HTML

def escape(v: Any) -> str:
    """``v`` as text that is safe in HTML (and in attribute values)."""
    return html.escape(str(v))


def page(title: str, body: str) -> str:
    """A complete self-contained HTML document: the one stylesheet inline, ``body`` inside ``<main>``."""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>{body}</main></body></html>\n")


def footer(note: str = "") -> str:
    """``Generated by medcls <version> on <date time>.``, then ``note`` (HTML)."""
    from .. import __version__

    return f"<footer>Generated by medcls {escape(__version__)} on {time.strftime('%Y-%m-%d %H:%M')}.{note}</footer>"


def section(title: str, body: str, *, sid: str | None = None) -> str:
    """A ``<section>`` headed ``title`` (``sid``: its id, the target of a navigation link)."""
    return (f'<section id="{escape(sid)}">' if sid else "<section>") + f"<h2>{escape(title)}</h2>{body}</section>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None, *,
          text: bool = False) -> str:
    """An HTML table; cells are HTML (``text=True``: plain values, escaped); ``classes``: a class per row."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join((f'<tr class="{c}">' if c else "<tr>")
                   + "".join(f"<td>{escape(x) if text else x}</td>" for x in r) + "</tr>"
                   for r, c in zip(rows, classes or [""] * len(rows), strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def row_fractions(counts: Any) -> np.ndarray:
    """Each cell of a confusion matrix as a fraction of its row (the true class); 0 in an empty row."""
    cm = np.asarray(counts)
    rows = cm.sum(1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)


def confusion_table(counts: Any, class_names: Sequence[str]) -> str:
    """A confusion matrix as an HTML table (rows = true class): each cell its count and row fraction (the recall
    of its row on the diagonal), shaded by that fraction. Drawn as HTML, not a figure: exact, searchable, and one
    table per operating point costs nothing to render."""
    cm = np.asarray(counts, dtype=np.int64)
    frac = row_fractions(cm)
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{escape(c)}</th>" for c in class_names)
    body = ""
    for i, c in enumerate(class_names):
        cells = "".join(
            f'<td class="cmc" style="background:rgba(31,119,180,{0.08 + 0.8 * frac[i, j]:.2f});'
            f'color:{"#fff" if frac[i, j] > 0.55 else "#1f2d3d"}">{cm[i, j]}<br>'
            f'<small>{fmt_percent(frac[i, j])}</small></td>'
            for j in range(len(class_names)))
        body += f"<tr><th>{escape(c)}</th>{cells}</tr>"
    return f'<table class="confusion"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def ci_cell(d: Any) -> str:
    """A table cell for a ``{value, low, high}`` dict: the value, its 95% CI below in small type (``—``: none)."""
    if not isinstance(d, Mapping):
        return DASH
    return f'{fmt(d.get("value"))}<br><small class="ci">{fmt_ci(d, value=False)}</small>'


def png(data: bytes, alt: str = "") -> str:
    """An ``<img>`` embedding PNG bytes as a base64 data URI."""
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" alt="{escape(alt)}">'


def img(path: Path, alt: str) -> str:
    """The PNG file at ``path`` embedded (:func:`png`), or a muted note that it was not produced."""
    if not path.is_file():
        return f'<p class="muted">({escape(path.name)} was not produced)</p>'
    return png(path.read_bytes(), alt)


def figure(body: str | Path, caption: str, *, cls: str = "") -> str:
    """A captioned ``<figure>``; ``body`` is HTML, or the path of a PNG to embed (:func:`img`)."""
    inner = body if isinstance(body, str) else img(body, caption)
    opening = f'<figure class="{cls}">' if cls else "<figure>"
    return f"{opening}{inner}<figcaption>{escape(caption)}</figcaption></figure>"
