"""report.html is self-contained and complete; model_card.md carries the headline numbers and warnings."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from medcls.api import calibrate, evaluate, train
from medcls.data.sources import LoadedData, load_data
from medcls.reports.evaluation import fmt_threshold
from medcls.runs import load_run

SECTIONS = ("data", "config", "training", "metrics", "operating-points", "confusion", "calibration", "errors")


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.imgs: list[str] = []
        self.refs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        self.refs += [v for k, v in attrs if k in ("href", "src") and v]

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> Collector:
    c = Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


@pytest.fixture(scope="module")
def tiny_run(make_cfg, tmp_path_factory):
    """One tiny training shared by the tests here (the ``tiny_cfg`` of tests/conftest.py, module-scoped)."""
    cfg = make_cfg(tmp_path_factory.mktemp("runs"), train={"warmup_epochs": 0.5},
                   eval={"batch_size": 64, "n_bootstrap": 200})
    return train(cfg)


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    metrics = evaluate(tiny_run, "test", device="cpu")
    return tiny_run, metrics, tiny_run.path / "eval-test"


def test_report_is_self_contained_and_complete(evaluated):
    _, metrics, out = evaluated
    html = (out / "report.html").read_text(encoding="utf-8")
    page = _parse(out / "report.html")
    assert set(SECTIONS) <= page.ids
    # history, roc, pr, reliability, decision curve; a confusion table per operating point
    ops = {k: v for k, v in metrics["operating_points"].items() if isinstance(v, dict) and "threshold" in v}
    assert len(page.imgs) >= 5 and html.count('<table class="confusion">') == len(ops)
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert not re.search(r"https?://", html)
    assert all(r.startswith(("#", "data:")) for r in page.refs)
    text = " ".join(page.text)
    for name, op in ops.items():
        assert name in text and fmt_threshold(op["threshold"]) in text
    assert "fitted on val" in text and "fixed" in text  # provenance per rule: the 0.5 default is not "chosen"
    transfer = metrics["threshold_transfer"]
    assert set(transfer) == set(ops) and transfer["default"]["provenance"] == "fixed"
    assert all(t["provenance"] == "fitted on val" for k, t in transfer.items() if k != "default")
    assert "sensitivity (val → here)" in text and "transfer" in text
    for t in transfer.values():  # every flag is shown; an operating point without one "held"
        for flag in t["flags"]:
            assert flag in text
    assert "Leakage between this run's splits" in text
    assert "not for clinical decision making" in text.lower()
    assert f"{metrics['ci']['auc']['low']:.3f}" in text and f"{metrics['ci']['auc']['high']:.3f}" in text
    assert "--gradcam-errors 8" in text  # no gradcam folder yet: says how to make one
    assert "<script" not in html and "@import" not in html


def test_model_card(evaluated):
    run, metrics, out = evaluated
    card = (out / "model_card.md").read_text(encoding="utf-8")
    auc = metrics["ci"]["auc"]
    assert re.search(rf"\| auc \| {auc['value']:.3f} \| {auc['low']:.3f}–{auc['high']:.3f} \|", card)
    assert "Not for clinical use" in card
    post = json.loads((run.path / "postprocess.json").read_text())["best"]
    sel = post["selected"]
    assert f"Rule **{sel}**" in card and post["operating_points"][sel]["rule"] in card
    assert fmt_threshold(post["threshold"]) in card and "fitted on val" in card
    assert "shared between the run's splits" in card or "The run's splits share data" in card
    for split, v in run.data_summary["splits"].items():
        assert f"| {split} |" in card and str(v["n"]) in card


def test_gradcam_gallery_is_embedded(evaluated, tmp_path):
    import shutil

    from PIL import Image

    from medcls.reports.evaluation import write_report

    run, metrics, src = evaluated
    out = shutil.copytree(src, tmp_path / "eval")
    (out / "gradcam" / "fn").mkdir(parents=True)
    for i in range(30):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(out / "gradcam" / "fn" / f"err_{i:02d}.png")
    page = _parse(write_report(run, "test", metrics, out))
    gallery = [s for s in page.imgs if s.startswith("data:image/png;base64,")]
    assert "fn/err_00.png" in " ".join(page.text) and "fn/err_29.png" not in " ".join(page.text)
    assert len(gallery) >= 24 + 4


def test_single_class_val_fallback_is_shown(tiny_run, tmp_path):
    run = tiny_run
    data = load_data(run.config.data)
    labels = np.asarray(data.val.labels)
    one_class = LoadedData(data.spec, data.train, data.val.subset(np.flatnonzero(labels == 0)), data.test, data.notes)
    out = tmp_path / "eval"
    run = load_run(shutil.copytree(run.path, tmp_path / "run"))
    calibrate(run, data=one_class)  # the calibration step on a one-class val split falls back
    metrics = evaluate(run, "test", device="cpu", data=one_class, out_dir=out)
    notes = metrics["postprocess"]["notes"]
    assert any("falling back to 0.5" in n for n in notes)
    page = _parse(out / "report.html")
    text = " ".join(page.text)
    assert "falling back to 0.5" in text
    html = (out / "report.html").read_text(encoding="utf-8")
    section = html[html.index('id="operating-points"'):html.index('id="confusion"')]
    assert 'class="banner"' in section and "falling back to 0.5" in section
    assert "falling back to 0.5" in (out / "model_card.md").read_text(encoding="utf-8")


def test_a_run_whose_val_copies_train_says_validation_is_optimistic(pneumonia_arrays, make_cfg, tmp_path, caplog):
    """The run checks its own splits before training: val made of train images is recorded in leakage.json,
    warned about, and stated in the report and the model card (issue 16: the check never reached them)."""
    a = pneumonia_arrays
    leaky = tmp_path / "leaky.npz"
    np.savez(leaky, train_images=a["train_images"][:96], train_labels=a["train_labels"][:96],
             val_images=a["train_images"][:40], val_labels=a["train_labels"][:40],  # 40 copies of train images
             test_images=a["test_images"][:48], test_labels=a["test_labels"][:48])
    cfg = make_cfg(tmp_path / "runs", train={"epochs": 1, "warmup_epochs": 0.5}, eval={"n_bootstrap": 50})
    cfg["data"]["options"]["path"] = str(leaky)
    cfg["data"]["min_val_size"] = 8
    run = train(cfg)
    lk = json.loads((run.path / "leakage.json").read_text())
    assert lk["leakage"] and lk["exact_duplicates"]["train/val"]["pairs"] == 40
    assert "the run's splits share data: train/val" in caplog.text and "validation metrics" in caplog.text
    evaluate(run, "test", device="cpu")
    text = (run.path / "eval-test" / "report.html").read_text(encoding="utf-8")
    card = (run.path / "eval-test" / "model_card.md").read_text(encoding="utf-8")
    for doc in (text, card):
        assert "40 exact duplicate pairs" in doc and "Validation is optimistic" in doc
    off = train({**cfg, "data": {**cfg["data"], "leakage_check": "off"}})
    assert not (off.path / "leakage.json").exists()
    evaluate(off, "test", device="cpu")
    assert "were not checked for shared images" in (off.path / "eval-test" / "model_card.md").read_text()


def test_confusion_matrices_come_from_the_arrays_passed(evaluated, tmp_path):
    """Binary: one matrix per operating point from the labels and probabilities given (no file is read back)."""
    import pandas as pd

    from medcls.reports.evaluation import write_report

    run, metrics, src = evaluated
    df = pd.read_csv(src / "predictions.csv")
    names = list(run.dataset.class_names)
    labels, probs = df["label"].map(names.index).to_numpy(), df[[f"prob_{c}" for c in names]].to_numpy()
    ops = {k: v for k, v in metrics["operating_points"].items() if isinstance(v, dict) and "threshold" in v}
    out = tmp_path / "eval"
    out.mkdir()
    html = write_report(run, "test", metrics, out, labels=labels, probs=probs).read_text(encoding="utf-8")
    confusion = html[html.index('id="confusion"'):html.index('id="calibration"')]
    assert confusion.count('<table class="confusion">') == len(ops)
    assert all(f"{name} (threshold {fmt_threshold(op['threshold'])})" in confusion for name, op in ops.items())
    pos = run.dataset.positive_index
    for name, op in ops.items():  # each table holds the counts at its threshold, row by row (true class)
        pred = np.where(probs[:, pos] >= op["threshold"], pos, 1 - pos)
        block = confusion[confusion.index(f"{name} (threshold"):]
        block = block[:block.index("</table>")]
        cells = [int(c) for c in re.findall(r'class="cmc"[^>]*>(\d+)<br>', block)]
        assert cells == [int(((labels == i) & (pred == j)).sum()) for i in range(2) for j in range(2)], name
    (out / "predictions.csv").write_text("not read")
    html = write_report(run, "test", metrics, out).read_text(encoding="utf-8")  # no arrays: said, not guessed
    assert "No predictions to build confusion matrices from." in html[html.index('id="confusion"'):]
