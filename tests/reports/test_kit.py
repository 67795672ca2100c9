"""The report kit: number and CI formats (a dash for undefined values), escaping, tables, embedded figures."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image

from medcls.reports.kit import (
    CSS,
    ci_cell,
    escape,
    figure,
    fmt,
    fmt_ci,
    fmt_percent,
    fmt_threshold,
    img,
    md_table,
    page,
    png,
    section,
    table,
)

CI = {"value": 0.91234, "low": 0.8801, "high": 0.94049}


@pytest.mark.parametrize(("v", "kw", "want"), [
    (0.91234, {}, "0.912"), (0.91234, {"digits": 4}, "0.9123"), (np.float32(0.5), {}, "0.500"),
    (7, {}, "7"), (np.int64(12), {}, "12"), (True, {}, "True"), (None, {}, "—"), (math.nan, {}, "—"),
    (math.inf, {}, "—"), (np.float64("nan"), {"dash": "–"}, "–"), (None, {"dash": ""}, ""),
    (0.0123, {"signed": True}, "+0.012"), (-0.5, {"digits": 2, "signed": True}, "-0.50"), ("<b>", {}, "&lt;b&gt;"),
])
def test_fmt(v, kw, want):
    assert fmt(v, **kw) == want


def test_fmt_ci_styles_and_undefined_intervals():
    assert fmt_ci(CI) == "0.912 [0.880, 0.940]"
    assert fmt_ci(CI, 4) == "0.9123 [0.8801, 0.9405]"
    assert fmt_ci(CI, value=False) == "[0.880, 0.940]"
    assert fmt_ci(CI, style="range") == "0.912 (0.880–0.940)"
    assert fmt_ci(CI, value=False, style="range") == "0.880–0.940"
    assert fmt_ci({"value": 0.012, "low": -0.01, "high": 0.03}, signed=True) == "+0.012 [-0.010, 0.030]"
    assert fmt_ci({**CI, "high": math.nan}) == "0.912 [0.880, —]"  # one bound: still an interval
    for no_ci in ({"value": 0.91234}, {"value": 0.91234, "low": math.nan, "high": math.nan},
                  {"value": 0.91234, "low": None, "high": None}):
        assert fmt_ci(no_ci) == fmt_ci(no_ci, style="range") == "0.912"
        assert fmt_ci(no_ci, value=False) == "—" and fmt_ci(no_ci, value=False, dash="–") == "–"
    assert fmt_ci(None) == fmt_ci("n/a", value=False) == "—"
    with pytest.raises(ValueError, match="style"):
        fmt_ci(CI, style="round")


def test_thresholds_percentages_and_markdown_tables():
    assert fmt_threshold(0.412749) == "0.4127" and fmt_threshold(0.412749, 3) == "0.413"
    assert fmt_threshold(np.float32(0.5)) == "0.5"
    assert fmt_percent(0.5) == "50%" and fmt_percent(0.1234, 1) == "12.3%" and fmt_percent(None) == "—"
    assert md_table(["metric", "value"], [["auc", "0.912"]]) == ["| metric | value |", "|---|---|", "| auc | 0.912 |"]


def test_html_helpers_escape_text_and_keep_html_cells():
    assert escape('<a href="x">&</a>') == "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
    assert escape(3) == "3"
    html = table(["<name>", "v"], [["<b>x</b>", "1"], ["y", "2"]], classes=["selected", ""])
    assert "<th>&lt;name&gt;</th>" in html and "<td><b>x</b></td>" in html and '<tr class="selected">' in html
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in table(["n"], [["<b>x</b>"]], text=True)
    assert section("A & B", "<p>x</p>", sid="ab") == '<section id="ab"><h2>A &amp; B</h2><p>x</p></section>'
    assert section("T", "") == "<section><h2>T</h2></section>"
    assert ci_cell(CI) == '0.912<br><small class="ci">[0.880, 0.940]</small>' and ci_cell(None) == "—"


def test_figures_are_embedded_and_pages_are_self_contained(tmp_path):
    path = tmp_path / "roc.png"
    Image.new("RGB", (4, 4), (200, 0, 0)).save(path)
    tag = img(path, 'ROC "curve"')
    assert tag.startswith('<img src="data:image/png;base64,iVBOR') and 'alt="ROC &quot;curve&quot;"' in tag
    assert img(tmp_path / "missing.png", "x") == '<p class="muted">(missing.png was not produced)</p>'
    assert figure(path, "ROC").startswith("<figure><img src=\"data:image/png;base64,")
    assert figure(png(b"\x89PNG"), "a<b", cls="thumb").endswith("<figcaption>a&lt;b</figcaption></figure>")
    doc = page("Title <1>", section("S", figure(path, "ROC"), sid="s"))
    refs = re.findall(r'(?:src|href)="([^"]*)"', doc)
    assert doc.startswith("<!DOCTYPE html>") and "<title>Title &lt;1&gt;</title>" in doc and CSS in doc
    assert refs and all(r.startswith("data:") for r in refs)  # nothing is loaded from elsewhere
