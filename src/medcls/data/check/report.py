"""Summaries, HTML page and terminal view of a data check (:mod:`medcls.data.check.scan`).

``report.html`` is self-contained: CSS inline and every thumbnail a base64 PNG, so it opens
offline and can be archived with ``report.json``. Text from the data (ids, class names, errors)
is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import math
import time
from dataclasses import dataclass, field
from html import escape
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ...utils import atomic_write_json, atomic_write_text, check_new_output, new_unique_dir
from ..sources import SPLITS, SourceData
from ..table import ImageTable

SPLIT_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
MAX_LISTED = 200  # pairs kept per split pair in the report (counts are always complete)
MAX_SHOWN = 24  # leaked pairs shown as thumbnails per category


@dataclass
class Scanned:
    """Fingerprints of the readable checked images, in split order."""

    split: np.ndarray  # split name per image
    index: np.ndarray  # row in its split's table
    ids: list[str]
    digest: list[bytes]
    phash: np.ndarray
    thumbs: np.ndarray

    def pair(self, a: int, b: int, distance: int, correlation: float) -> dict[str, Any]:
        if SPLITS.index(self.split[a]) > SPLITS.index(self.split[b]):
            a, b = b, a
        return {"split_a": str(self.split[a]), "id_a": self.ids[a], "index_a": int(self.index[a]),
                "split_b": str(self.split[b]), "id_b": self.ids[b], "index_b": int(self.index[b]),
                "distance": int(distance), "correlation": round(float(correlation), 4)}


@dataclass
class DataReport:
    """What :func:`check_data` found; :meth:`to_dict` is ``report.json``, :meth:`write` adds ``report.html``."""

    source: str
    options: dict[str, Any]
    dataset: str
    task: str
    classes: list[str]
    settings: dict[str, Any]
    counts: dict[str, Any]
    checked: dict[str, int]
    images: dict[str, Any]
    unreadable: list[dict[str, str]]
    exact_duplicates: dict[str, Any]
    near_duplicates: dict[str, Any]
    group_overlap: dict[str, Any] | None
    class_balance: dict[str, Any]
    leakage_reasons: list[str]
    warnings: list[str]
    notes: list[str]
    samples: dict[str, dict[str, list[int]]]  # split -> class -> table rows shown as thumbnails
    tables: dict[str, ImageTable] = field(default_factory=dict, repr=False, compare=False)

    @property
    def leakage(self) -> bool:
        """True when images or patients/groups are shared between splits."""
        return bool(self.leakage_reasons)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "tables"}
        return {"leakage": self.leakage, **d}

    def split_summary(self) -> dict[str, Any]:
        """What a run records of the check of its own splits (``RUN/leakage.json``): per pair of splits the
        exact and near-duplicate pairs and patients/groups shared, without the listed examples."""
        def counts(d: dict[str, Any]) -> dict[str, Any]:
            return {k: {f: v[f] for f in ("pairs", "clusters", "images")} for k, v in d["cross_split"].items()}

        return {"leakage": self.leakage, "reasons": self.leakage_reasons, "checked": self.checked,
                "exact_duplicates": counts(self.exact_duplicates), "near_duplicates": counts(self.near_duplicates),
                "group_overlap": self.group_overlap, "notes": self.notes,
                "rules": {k: self.settings[k] for k in ("exact_duplicate_rule", "near_duplicate_rule", "sampled")}}

    def write(self, output: str | Path | None = None, *, root: str | Path = "data-check") -> Path:
        """Write ``report.json`` and ``report.html`` into a new directory (``root/<dataset>-<time>`` by default)."""
        return write_report(self, output, root=root)


def _dups(sc: Scanned, clusters: list[np.ndarray], edges: tuple[np.ndarray, ...] | None) -> dict[str, Any]:
    """Cross-split and within-split counts for duplicate clusters; ``edges`` (i, j, d, corr) or all pairs equal."""
    counts = np.array([[int((sc.split[c] == s).sum()) for s in SPLITS] for c in clusters]).reshape(-1, 3)

    def listed(s: str, t: str, limit: int) -> tuple[int, list[dict]]:
        if edges is not None:
            i, j, d, corr = edges
            a, b = sc.split[i], sc.split[j]
            m = ((a == s) & (b == t)) | ((a == t) & (b == s))
            return int(m.sum()), [sc.pair(*x) for x in zip(i[m][:limit], j[m][:limit], d[m][:limit], corr[m][:limit],
                                                              strict=True)]
        si, ti = SPLITS.index(s), SPLITS.index(t)
        n = int((counts[:, si] * counts[:, ti]).sum()) if s != t else int((counts[:, si] * (counts[:, si] - 1) // 2).sum())
        every = ((x, y) for c in clusters for x in c[sc.split[c] == s] for y in c[sc.split[c] == t] if s != t or x < y)
        return n, [sc.pair(x, y, 0, 1.0) for x, y in islice(every, limit)]

    cross, within = {}, {}
    for s, t in SPLIT_PAIRS:
        si, ti = SPLITS.index(s), SPLITS.index(t)
        both = (counts[:, si] > 0) & (counts[:, ti] > 0)
        n, pairs = listed(s, t, MAX_LISTED)
        cross[f"{s}/{t}"] = {"pairs": n, "clusters": int(both.sum()),
                             "images": {s: int(counts[both, si].sum()), t: int(counts[both, ti].sum())}, "listed": pairs}
    for si, s in enumerate(SPLITS):
        has = counts[:, si] > 1
        n, pairs = listed(s, s, 10)
        within[s] = {"pairs": n, "clusters": int(has.sum()), "copies": int((counts[has, si] - 1).sum()),
                     "examples": pairs}
    return {"cross_split": cross, "within_split": within}


def _components(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    _, lab = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    involved = np.unique(np.concatenate([i, j]))
    order = involved[np.argsort(lab[involved], kind="stable")]
    return np.split(order, np.flatnonzero(np.diff(lab[order])) + 1)


def _group_overlap(tables: dict[str, ImageTable]) -> dict[str, Any] | None:
    grouped = {s: np.asarray(t.groups).astype(str) for s, t in tables.items() if t.groups is not None}
    if len(grouped) < 2:
        return None
    out = {}
    for s, t in SPLIT_PAIRS:
        if s in grouped and t in grouped:
            shared = np.intersect1d(grouped[s], grouped[t])
            ins, int_ = np.isin(grouped[s], shared), np.isin(grouped[t], shared)
            examples = [{"group": str(g), f"ids_{s}": [tables[s].ids[k] for k in np.flatnonzero(grouped[s] == g)[:3]],
                         f"ids_{t}": [tables[t].ids[k] for k in np.flatnonzero(grouped[t] == g)[:3]]}
                        for g in shared[:20]]
            out[f"{s}/{t}"] = {"groups": len(shared), "images": {s: int(ins.sum()), t: int(int_.sum())},
                               "examples": examples}
    return out


def _counts(tables: dict[str, ImageTable], classes: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for s, t in tables.items():
        lab = np.asarray(t.labels)
        c = lab.sum(0) if lab.ndim == 2 else np.bincount(lab.astype(np.int64), minlength=len(classes))
        out[s] = {"n": len(t), "per_class": dict(zip(classes, c.astype(int).tolist(), strict=False))}
    return out


def _balance(counts: dict[str, Any], multilabel: bool, warn: list[str]) -> dict[str, Any]:
    """Majority/minority ratio per split; warnings for ratio > 3, classes with < 10 or no images."""
    out = {}
    for s, c in counts.items():
        per = c["per_class"]
        if not per or not c["n"]:
            continue
        big, small = max(per, key=per.get), min(per, key=per.get)
        ratio = per[big] / per[small] if per[small] else math.inf
        out[s] = {"majority": big, "minority": small, "ratio": round(ratio, 2) if per[small] else None}
        what = "positive images" if multilabel else "images"
        for name, k in per.items():
            if k == 0:
                warn.append(f"{s}: no {what} of class {name!r}")
            elif k < 10:
                warn.append(f"{s}: class {name!r} has only {k} {what if k > 1 else what[:-1]} (< 10)")
        if not multilabel and per[small] and ratio > 3:
            warn.append(f"{s}: class imbalance {big!r}/{small!r} = {per[big]}/{per[small]} = {ratio:.1f} (> 3)")
    return out


def _image_stats(results: list[tuple]) -> dict[str, Any]:
    from collections import Counter

    ok = [r for r in results if r[0] == "ok"]
    sizes = Counter(f"{r[3][1]}x{r[3][0]}" for r in ok)  # width x height
    hw = np.array([r[3] for r in ok]).reshape(-1, 2)
    stat = {k: {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())} if len(v) else None
            for k, v in (("height", hw[:, 0]), ("width", hw[:, 1]))}
    top = dict(sizes.most_common(20))
    if len(sizes) > 20:
        top["other"] = sum(sizes.values()) - sum(top.values())
    return {"modes": dict(Counter(r[1] for r in ok).most_common()),
            "bit_depth": {str(k): v for k, v in sorted(Counter(r[2] for r in ok).items())},
            "sizes": top, "distinct_sizes": len(sizes), **stat}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summarise(src: SourceData, tables: dict[str, ImageTable], sc: Scanned, near: tuple[np.ndarray, ...],
              results: list[tuple], *, unreadable: list[dict[str, str]], source_warnings: list[str],
              sampled: bool) -> dict[str, Any]:
    """The report fields computed from the scan: counts, image stats, duplicates, overlap, warnings."""
    from ..sources.folder import short_list

    warn = list(source_warnings)
    counts = _counts(tables, src.spec.class_names)
    balance = _balance(counts, src.spec.task == "multilabel", warn)
    by_digest: dict[bytes, list[int]] = {}
    for g, dg in enumerate(sc.digest):
        by_digest.setdefault(dg, []).append(g)
    exact = _dups(sc, [np.array(v) for v in by_digest.values() if len(v) > 1], None)
    near_d = _dups(sc, _components(len(sc.ids), near[0], near[1]), near)
    overlap = _group_overlap(tables)
    reasons: list[str] = []
    for what, d in (("exact duplicate", exact), ("near-duplicate", near_d)):
        for key, v in d["cross_split"].items():
            if v["pairs"]:
                s, t = key.split("/")
                reasons.append(f"{key}: {_plural(v['pairs'], what + ' pair')} ({_plural(v['clusters'], 'group')}: "
                               f"{v['images'][s]} {s} and {v['images'][t]} {t} images)")
        for s, v in d["within_split"].items():
            if v["pairs"]:
                warn.append(f"{s}: {v['copies']} {what} cop{'y' if v['copies'] == 1 else 'ies'} within the split "
                            f"({_plural(v['pairs'], 'pair')})")
    for key, v in (overlap or {}).items():
        if v["groups"]:
            s, t = key.split("/")
            reasons.append(f"{key}: {_plural(v['groups'], 'patient/group id')} in both splits "
                           f"({v['images'][s]} {s} and {v['images'][t]} {t} images)")
    if unreadable:
        warn.append(f"{_plural(len(unreadable), 'unreadable file')}: {short_list([u['id'] for u in unreadable])}")
    notes = list(getattr(src, "notes", None) or [])
    if len(tables) < 2:
        notes.append(f"only the {', '.join(tables)} split exists: nothing to compare across splits; training "
                     "carves val/test from it, so duplicates within it become leakage there")
    elif overlap is None:
        notes.append("no patient/group ids in this source: patient overlap across splits not checked")
    if sampled:
        notes.append("--max-images: only an evenly spaced sample of each split was decoded (see 'checked'); "
                     "duplicates involving the other images are not found")
    return {"counts": counts, "images": _image_stats(results), "unreadable": unreadable,
            "exact_duplicates": exact, "near_duplicates": near_d, "group_overlap": overlap,
            "class_balance": balance, "leakage_reasons": reasons,
            "warnings": [f"leakage: {r}" for r in reasons] + warn, "notes": notes}


# ----------------------------------------------------------------------------------------------- files

def new_report_dir(root: str | Path, name: str) -> Path:
    """Create ``root/<name>-<YYYYmmdd-HHMMSS>[-k]``; an existing directory is never reused."""
    return new_unique_dir(root, name, "report directory")


def check_new(output: str | Path | None) -> None:
    """Raise when ``output`` exists (call before the work: reports are never overwritten)."""
    if output is not None:
        check_new_output(output, "data reports", hint="choose another --output")


def write_report(report: DataReport, output: str | Path | None = None, *, root: str | Path = "data-check") -> Path:
    """Write ``report.json`` and ``report.html`` into ``output`` (must not exist) or a new dir under ``root``."""
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

CSS = """
*{box-sizing:border-box}body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1d2330;
 background:#f4f6f9;margin:0}main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin:16px 0 6px}.sub,.muted,figcaption{color:#5a6472}
.banner{border-radius:4px;padding:10px 14px;margin:12px 0;border:1px solid #9ccc9f;border-left:6px solid #2e7d32;
 background:#eef7ee}.leak{background:#fdecea;border-color:#e6a4a0;border-left-color:#c0392b;font-weight:600}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px}th,td{padding:4px 10px;border:1px solid #dde3ea;
 text-align:right}th:first-child,td:first-child{text-align:left}thead th{background:#e9eef5}
ul{padding-left:22px}li{margin:2px 0}code{font-size:13px}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px}
.pair{border:1px solid #dde3ea;border-radius:4px;padding:6px}.pair div{display:flex;gap:6px}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin-bottom:8px}figure{margin:0;width:104px}
.pair figure{width:50%}figure img{width:100%;image-rendering:pixelated;background:#000}
figcaption{font-size:11px;word-break:break-all}
"""


def _thumb(table: ImageTable | None, row: int, caption: str, size: int = 112) -> str:
    from PIL import Image

    try:
        arr = np.asarray(table.load(row))  # type: ignore[union-attr]
        if arr.dtype != np.uint8:
            a = arr.astype(np.float64)
            lo, hi = float(a.min()), float(a.max())
            arr = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * 255 / (hi - lo)).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3] if arr.ndim == 3 else arr))
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        src = f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}" alt="">'
    except Exception as e:  # a thumbnail must not stop the report
        src = f'<p class="muted">({escape(type(e).__name__)})</p>'
    return f"<figure>{src}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs_html(report: DataReport, dups: dict[str, Any], what: str) -> str:
    out = []
    for key, v in dups["cross_split"].items():
        if not v["pairs"]:
            continue
        shown = v["listed"][:MAX_SHOWN]
        cards = "".join(
            f'<div class="pair"><div>{_thumb(report.tables.get(p["split_a"]), p["index_a"], p["id_a"])}'
            f'{_thumb(report.tables.get(p["split_b"]), p["index_b"], p["id_b"])}</div>'
            f'<small class="muted">phash distance {p["distance"]}, correlation {p["correlation"]:.4f}</small></div>'
            for p in shown)
        more = f" (showing {len(shown)})" if len(shown) < v["pairs"] else ""
        out.append(f"<h3>{escape(key)}: {_plural(v['pairs'], what + ' pair')}{more}</h3><div class=\"pairs\">{cards}</div>")
    return "".join(out)


def render_html(report: DataReport) -> str:
    from ... import __version__

    c, ex, nd, ov = report.counts, report.exact_duplicates, report.near_duplicates, report.group_overlap
    counts = _table(["split", "images", *report.classes, "decoded"],
                    [[s, v["n"], *v["per_class"].values(), report.checked.get(s, 0)] for s, v in c.items()])
    img = report.images
    props = '<div class="row">' + "".join(_table([name, "images"], list(img[key].items())) for key, name in
                                          (("modes", "mode"), ("bit_depth", "bits"), ("sizes", "width x height")))
    cross = _table(["splits", "exact pairs", "exact groups", "near pairs", "near groups", "shared patients/groups"],
                   [[k, ex["cross_split"][k]["pairs"], ex["cross_split"][k]["clusters"], nd["cross_split"][k]["pairs"],
                     nd["cross_split"][k]["clusters"], "—" if not ov or k not in ov else ov[k]["groups"]]
                    for k in ex["cross_split"]])
    within = _table(["split", "exact pairs", "exact copies", "near pairs", "near copies"],
                    [[s, ex["within_split"][s]["pairs"], ex["within_split"][s]["copies"],
                      nd["within_split"][s]["pairs"], nd["within_split"][s]["copies"]] for s in report.counts])
    groups = "".join(
        f"<h3>{escape(k)}: {_plural(v['groups'], 'shared id')}</h3>"
        + _table(["patient/group", *[x for x in v["examples"][0] if x != "group"]],
                 [[e["group"], *[", ".join(ids) for x, ids in e.items() if x != "group"]] for e in v["examples"]])
        for k, v in (ov or {}).items() if v["groups"]) or "<p class=\"muted\">No shared ids (or no ids in this source).</p>"
    unread = ("<ul>" + "".join(f"<li><code>{escape(u['id'])}</code> ({escape(u['split'])}): {escape(u['error'])}</li>"
                                for u in report.unreadable) + "</ul>") if report.unreadable else "<p>None.</p>"
    samples = "".join(f"<h3>{escape(s)}</h3>" + "".join(
        f'<div class="row"><b style="width:120px">{escape(name)}</b>'
        + "".join(_thumb(report.tables.get(s), r, report.tables[s].ids[r]) for r in rows) + "</div>"
        for name, rows in per.items()) for s, per in report.samples.items())
    bullets = "".join(f"<li>{escape(w)}</li>" for w in report.warnings) or "<li>None.</li>"
    banner = ('<div class="banner leak">Leakage found: ' + "; ".join(escape(r) for r in report.leakage_reasons) + "</div>"
              if report.leakage else '<div class="banner">No leakage found between splits.</div>')
    st = report.settings
    sections = [
        ("Warnings", f"<ul>{bullets}</ul>"), ("Counts per split and class", counts),
        ("Images", props + f"</div><p class=\"muted\">{img['distinct_sizes']} distinct sizes.</p>"),
        ("Duplicates and shared patients across splits", cross + _pairs_html(report, ex, "exact duplicate")
         + _pairs_html(report, nd, "near-duplicate")),
        ("Duplicates within splits", within), ("Patient/group overlap", groups), ("Unreadable files", unread),
        ("Samples per class", samples),
        ("Method", f"<ul><li>Exact: {escape(st['exact_duplicate_rule'])}</li><li>Near: {escape(st['near_duplicate_rule'])}"
                   f"</li><li>{escape(st['hash'])}; {escape(st['search'])}</li></ul>"
                   + "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>"),
    ]
    title = f"Data check · {report.dataset}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1><p class=\"sub\">"
            f"<code>{escape(report.source)}</code> · {escape(report.task)} · {sum(v['n'] for v in c.values())} images"
            f"</p>{banner}" + "".join(f"<section><h2>{escape(h)}</h2>{b}</section>" for h, b in sections)
            + f"<footer class=\"muted\"><p>medcls {escape(__version__)} · {time.strftime('%Y-%m-%d %H:%M')}</p></footer>"
            "</main></body></html>\n")


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
    fmt = ", ".join(f"{k} {v}" for k, v in img["modes"].items())
    bits = ", ".join(f"{k}-bit {v}" for k, v in img["bit_depth"].items())
    sizes = ", ".join(f"{k} ({v})" for k, v in list(img["sizes"].items())[:3])
    con.print(markup_escape(f"images: {fmt}; {bits}; sizes {sizes}" + (" …" if img["distinct_sizes"] > 3 else "")))
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
