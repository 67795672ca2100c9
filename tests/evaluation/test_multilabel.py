"""Multilabel (ChestMNIST-style, one sigmoid per finding) through the whole chain.

A 3-label npz in the MedMNIST layout is built from real PneumoniaMNIST images:
``pneumonia`` (the real label), ``bright`` (image brighter than the split's
median: learnable from intensity) and ``rare`` (4 positives in train, none in
val or test: thresholds and AUC meet a single-class label). It is read through
``medmnist:chestmnist`` with ``options.path`` and ``options.labels``, trained for
2 epochs, evaluated on test, exported (fp32 ONNX) and served.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm
from PIL import Image

from medcls.data.sources import load_data
from medcls.errors import DataError
from medcls.metrics import TemperatureScaler, choose_thresholds
from medcls.metrics.operating_points import multilabel_decision_metrics

LABELS = ["pneumonia", "bright", "rare"]
SIZES = {"train": 192, "val": 96, "test": 96}


def make_chest_npz(path, arrays: dict[str, np.ndarray], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in SIZES.items():
        images, y = arrays[f"{split}_images"], arrays[f"{split}_labels"][:, 0]
        # balanced pneumonia label so val has both classes in good numbers
        idx = np.r_[rng.choice(np.flatnonzero(y == 0), n // 2, replace=False),
                    rng.choice(np.flatnonzero(y == 1), n - n // 2, replace=False)]
        idx = rng.permutation(idx)
        im = images[idx]
        mean = im.reshape(n, -1).mean(1)
        rare = np.zeros(n, np.uint8)
        if split == "train":
            rare[:4] = 1
        labels = np.stack([y[idx], (mean > np.median(mean)), rare], 1).astype(np.uint8)
        out[f"{split}_images"], out[f"{split}_labels"] = im, labels
    np.savez(path, **out)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def chest(tmp_path_factory, pneumonia_arrays):
    """(npz path, its arrays) of the 3-label fixture."""
    path = tmp_path_factory.mktemp("chest") / "chest3.npz"
    make_chest_npz(path, pneumonia_arrays)
    with np.load(path) as z:
        return path, {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ml_run(chest, tmp_path_factory):
    """ResNet-10t trained (2 epochs), evaluated on test with the youden rule per label, exported with fp32 ONNX."""
    from medcls import evaluate, train
    from medcls.export import export_bundle

    root = tmp_path_factory.mktemp("mlrun")
    cfg = {"name": "chest3", "seed": 0, "output_dir": str(root / "runs"),
           "data": {"source": "medmnist:chestmnist", "options": {"path": str(chest[0]), "labels": LABELS}},
           "model": {"name": "resnet10t", "stem": "default"},
           "train": {"epochs": 2, "batch_size": 32, "progress": False},
           "eval": {"n_bootstrap": 200, "operating_point": "youden", "batch_size": 64}}
    run = train(cfg)
    metrics = evaluate(run, "test")
    info = export_bundle(run, root / "bundle", n_parity=32)
    return run, metrics, root / "bundle", info


def _ids(df: pd.DataFrame) -> list[int]:
    return [int(s.split("/")[1]) for s in df["id"]]


# ------------------------------------------------------------------- reader
def test_reader_accepts_custom_path_and_label_names(chest):
    from medcls.config import DataConfig

    path, arrays = chest
    d = load_data(DataConfig(source="medmnist:chestmnist", options={"path": str(path), "labels": LABELS}))
    assert d.spec.task == "multilabel" and d.spec.class_names == tuple(LABELS)
    assert d.train.labels.shape == (192, 3) and d.train.labels.dtype == np.float32
    assert np.array_equal(d.test.labels, arrays["test_labels"])
    with pytest.raises(DataError, match=r"train_labels has shape \(192, 3\), expected \(N, 14\).*data\.options\.labels"):
        load_data(DataConfig(source="medmnist:chestmnist", options={"path": str(path)}))
    with pytest.raises(DataError, match="must be a list of class names"):
        load_data(DataConfig(source="medmnist:chestmnist", options={"path": str(path), "labels": "a,b,c"}))


def test_reader_rejects_non_binary_multi_hot(chest, tmp_path):
    from medcls.config import DataConfig

    _, arrays = chest
    bad = dict(arrays)
    bad["val_labels"] = bad["val_labels"].copy()
    bad["val_labels"][0, 1] = 2
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(DataError, match=r"val_labels must be multi-hot 0/1, got values \[2\]"):
        load_data(DataConfig(source="medmnist:chestmnist", options={"path": str(tmp_path / "bad.npz"),
                                                                    "labels": LABELS}))


# ------------------------------------------------------------------ metrics
def test_metrics_json_per_label_macro_micro_match_sklearn(ml_run):
    run, _, _, _ = ml_run
    disk = json.loads((run.path / "eval-test" / "metrics.json").read_text())
    assert disk["task"] == "multilabel" and disk["n"] == 96
    df = pd.read_csv(run.path / "eval-test" / "predictions.csv")
    y = df[[f"true_{c}" for c in LABELS]].to_numpy()
    p = df[[f"prob_{c}" for c in LABELS]].to_numpy()
    for k, c in enumerate(LABELS[:2]):
        entry = disk["per_class"][c]
        assert entry["auc"] == pytest.approx(skm.roc_auc_score(y[:, k], p[:, k]), abs=1e-6)
        assert entry["ap"] == pytest.approx(skm.average_precision_score(y[:, k], p[:, k]), abs=1e-6)
        assert entry["auc_delong"]["low"] <= entry["auc"] <= entry["auc_delong"]["high"]
        pred = (p[:, k] >= 0.5).astype(int)
        assert entry["sensitivity"] == pytest.approx(skm.recall_score(y[:, k], pred, zero_division=np.nan), nan_ok=True)
        assert entry["specificity"] == pytest.approx(skm.recall_score(1 - y[:, k], 1 - pred, zero_division=np.nan),
                                                     nan_ok=True)
    # 'rare' has one class on test: nan, skipped with a note, left out of the macro mean (sklearn's macro is undefined)
    assert np.isnan(disk["per_class"]["rare"]["auc"]) and set(disk["skipped_labels"]) == {"rare"}
    assert any("'rare'" in n and "on test" in n for n in disk["postprocess"]["notes"])
    assert disk["auc"] == disk["macro_auc"] == pytest.approx(skm.roc_auc_score(y[:, :2], p[:, :2], average="macro"),
                                                              abs=1e-6)
    assert disk["micro_auc"] == pytest.approx(skm.roc_auc_score(y, p, average="micro"), abs=1e-6)
    assert disk["ci"]["auc"]["low"] <= disk["auc"] <= disk["ci"]["auc"]["high"]
    assert disk["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, (p >= 0.5).astype(int)))
    # the 'bright' label is learnable from intensity even after 2 epochs
    assert disk["per_class"]["bright"]["auc"] > 0.7
    summary = json.loads((run.path / "metrics.json").read_text())["eval"]["test"]
    assert summary["auc"] == disk["auc"] and summary["micro_auc"] == disk["micro_auc"]


def _val_probs(run, chest_arrays) -> tuple[np.ndarray, np.ndarray]:
    from medcls import Predictor

    pred = Predictor.load(run.path)
    res = pred.predict(list(chest_arrays["val_images"]))
    return np.array([[r["probabilities"][c] for c in LABELS] for r in res]), chest_arrays["val_labels"]


def test_thresholds_are_chosen_per_label_on_val_and_applied_on_test(ml_run, chest):
    run, metrics, _, _ = ml_run
    post = json.loads((run.path / "postprocess.json").read_text())["best"]
    thr = post["thresholds"]
    assert post["selected"] == "youden" and post["fitted_on"] == "val"
    assert post["threshold_rules"] == {"pneumonia": "youden", "bright": "youden", "rare": "default"}
    # recomputed from the validation probabilities, label by label
    pv, yv = _val_probs(run, chest[1])
    for k, c in enumerate(LABELS[:2]):
        ref = choose_thresholds(yv[:, k], pv[:, k])["youden"]["threshold"]
        assert thr[c] == pytest.approx(ref, abs=1e-6), c
    assert thr["rare"] == 0.5 and set(post["operating_points"]["skipped"]) == {"rare"}
    assert any("'rare'" in n and "on val" in n for n in post["notes"])
    assert len(set(thr.values())) == 3  # one threshold per label, not a shared one
    # applied unchanged on test
    df = pd.read_csv(run.path / "eval-test" / "predictions.csv")
    p = df[[f"prob_{c}" for c in LABELS]].to_numpy()
    y = df[[f"true_{c}" for c in LABELS]].to_numpy()
    called = p >= np.array([thr[c] for c in LABELS])
    assert np.array_equal(df[[f"decision_{c}" for c in LABELS]].to_numpy(), called.astype(int))
    texts = [";".join(c for c, f in zip(LABELS, row, strict=True) if f) or "no finding" for row in called]
    assert list(df["decision"]) == texts
    dec = metrics["decision"]
    ref = multilabel_decision_metrics(y, p, thr, class_names=LABELS)
    assert dec["operating_point"] == "youden" and dec["subset_accuracy"] == pytest.approx(ref["subset_accuracy"])
    assert dec["n_no_finding"] == int((~called.any(1)).sum())
    for c in LABELS:
        op = metrics["operating_points"]["per_label"][c]
        assert op["chosen_on"] == "val"
        sel = op[post["threshold_rules"][c]]
        assert sel["threshold"] == thr[c]
        assert sel["sensitivity"]["value"] == pytest.approx(dec["per_label"][c]["sensitivity"], nan_ok=True)


def test_one_temperature_shared_by_all_labels(ml_run, chest):
    import torch

    from medcls import Predictor

    run, metrics, _, _ = ml_run
    pred = Predictor.load(run.path)
    x = torch.stack([pred.preprocess(im) for im in chest[1]["val_images"]])
    logits = pred.logits(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = TemperatureScaler(task="multilabel").fit(logits, chest[1]["val_labels"]).temperature_
    post = json.loads((run.path / "postprocess.json").read_text())["best"]
    assert isinstance(post["temperature"], float) and post["temperature"] == pytest.approx(ref, rel=1e-4)
    assert metrics["calibration"]["temperature"] == post["temperature"]


# ------------------------------------------------------ bundle, predictor
def test_bundle_carries_thresholds_and_predictor_matches_evaluation(ml_run, chest):
    from medcls import Predictor

    run, _, bundle, info = ml_run
    post = json.loads((run.path / "postprocess.json").read_text())["best"]
    assert info["model"]["dataset"]["task"] == "multilabel" and info["model"]["dataset"]["class_names"] == LABELS
    assert info["postprocess"] == post and post["selected"] == "youden"
    assert info["checks"]["onnx_parity"]["max_abs_prob_diff"] <= 1e-4
    df = pd.read_csv(run.path / "eval-test" / "predictions.csv")
    images = [chest[1]["test_images"][i] for i in _ids(df)]
    want = df[[f"prob_{c}" for c in LABELS]].to_numpy()
    for backend, tol in (("torch", 1e-5), ("onnx", 1e-4)):
        pred = Predictor.load(bundle, backend=backend)
        assert pred.thresholds == post["thresholds"]
        res = pred.predict(images)
        got = np.array([[r["probabilities"][c] for c in LABELS] for r in res])
        assert np.abs(got - want).max() <= tol, backend
        if backend == "torch":  # decisions equal the evaluation's at the same thresholds
            assert [";".join(r["predicted"]) or "no finding" for r in res] == list(df["decision"])
            assert res[0]["decision"]["thresholds"] == post["thresholds"] and "threshold" not in res[0]["decision"]


def test_decide_lists_labels_at_their_own_threshold(ml_run):
    from medcls import Predictor

    _, _, bundle, _ = ml_run
    pred = Predictor.load(bundle)
    t = pred.thresholds
    assert pred.decide(np.array([t["pneumonia"], t["bright"] - 1e-6, 0.49])) == ["pneumonia"]
    assert pred.decide(np.zeros(3)) == []
    assert pred.decide(np.ones(3)) == LABELS
    from medcls.artefact import Postprocess
    from medcls.errors import ConfigError

    def make(**post):
        return Predictor(pred.model_spec, Postprocess(**post), model=pred.model)

    with pytest.raises(ConfigError, match="unknown label.*'brigth'.*Did you mean 'bright'"):
        make(thresholds={"pneumonia": 0.3, "brigth": 0.4, "rare": 0.5})
    with pytest.raises(ConfigError, match=r"no entry for label\(s\) \['rare'\]"):
        make(thresholds={"pneumonia": 0.3, "bright": 0.4})
    assert make(threshold=0.3).thresholds == dict.fromkeys(LABELS, 0.3)  # no per-label thresholds saved


def test_cli_predict_prints_findings(ml_run, chest, tmp_path, capsys):
    from medcls import Predictor
    from medcls.cli.main import main

    _, _, bundle, _ = ml_run
    images = chest[1]["test_images"][:4]
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(files[-1])
    assert main(["predict", str(bundle), *map(str, files), "--csv", str(tmp_path / "out.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["file", *LABELS, "predicted", "ood"]
    expected = [";".join(r["predicted"]) or "no finding" for r in Predictor.load(bundle).predict(list(images))]
    assert [ln.split("\t")[-2] for ln in lines[1:5]] == expected
    assert {ln.split("\t")[-1] for ln in lines[1:5]} <= {"ok", "flagged"}  # the bundle's gate (one class mean)
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out["predicted"]) == expected and list(out.columns) == ["file", *(f"prob_{c}" for c in LABELS),
                                                                        "predicted", "ood", "ood_score"]


# ------------------------------------------------------------------- REST
@pytest.fixture(scope="module")
def client(ml_run):
    pytest.importorskip("fastapi")  # the 'serve' extra
    from fastapi.testclient import TestClient

    from medcls.serve import ServeSettings, create_app

    _, _, bundle, _ = ml_run
    app = create_app(ServeSettings(bundle=str(bundle), backend="onnx", max_wait_ms=2))
    with TestClient(app) as c:
        yield c


def test_rest_predict_returns_label_probabilities_and_findings(client, ml_run, chest):
    run, _, _, info = ml_run
    df = pd.read_csv(run.path / "eval-test" / "predictions.csv")
    thr = info["postprocess"]["thresholds"]
    for row in range(6):
        i = _ids(df)[row]
        r = client.post("/v1/predict", files={"file": ("x.png", png_bytes(chest[1]["test_images"][i]), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == "multilabel" and list(body["probabilities"]) == LABELS
        for c in LABELS:
            assert abs(body["probabilities"][c] - df[f"prob_{c}"][row]) < 1e-4
        assert body["decision"]["thresholds"] == thr and body["decision"]["operating_point"] == "youden"
        assert body["findings"] == body["predicted"] == [c for c in LABELS if body["probabilities"][c] >= thr[c]]
        assert body["decision"]["no_finding"] == (not body["findings"])
        assert (";".join(body["findings"]) or "no finding") == df["decision"][row]
    m = client.get("/v1/model").json()
    assert m["task"] == "multilabel" and m["thresholds"] == thr


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed (make browser-deps)")
def test_web_page_shows_bars_per_label_and_findings(client, chest):
    """The real page and app (TestClient behind playwright's request routing), in headless chromium."""
    pw = pytest.importorskip("playwright.sync_api")
    img = chest[1]["test_images"][0]

    def handle(route):
        req = route.request
        path = req.url.removeprefix("http://medcls.test")
        r = client.request(req.method, path, content=req.post_data_buffer,
                           headers={k: v for k, v in req.headers.items() if k.lower() == "content-type"})
        route.fulfill(status=r.status_code, body=r.content, content_type=r.headers.get("content-type"))

    body = client.post("/v1/predict", files={"file": ("x.png", png_bytes(img), "image/png")}).json()
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=args)
        page = browser.new_page()
        page.route("http://medcls.test/**", handle)
        page.goto("http://medcls.test/")
        page.set_input_files("#file", files=[{"name": "x.png", "mimeType": "image/png", "buffer": png_bytes(img)}])
        page.wait_for_selector("#result[data-ready='1']", timeout=60_000)
        assert page.locator("#bars .bar").count() == 3 and page.locator("#bars .thr").count() == 3
        flagged = page.eval_on_selector_all("#bars .bar", "rows => rows.map(r => r.dataset.finding)")
        assert flagged == ["1" if c in body["findings"] else "0" for c in LABELS]
        assert page.locator("#findings li").count() == len(body["findings"])
        text = page.inner_text("#decision")
        assert "Decision:" in text and ("no finding" in text) == (not body["findings"])
        browser.close()


# ------------------------------------------------------ report, model card
def test_report_and_model_card_have_per_label_sections(ml_run):
    run, _, _, _ = ml_run
    html = (run.path / "eval-test" / "report.html").read_text()
    for text in ("<h3>Per label</h3>", "Per-label counts", "One threshold per label", "one T shared by all labels",
                 "(one class here)", "micro_auc", "0 positive(s) and 96 negative(s) on val"):
        assert text in html, text
    assert "Confusion matrices are not shown" not in html
    card = (run.path / "eval-test" / "model_card.md").read_text()
    for text in ("## Per-label performance (test split)", "## Operating points in use (one per label)",
                 "| micro_auc |", "no finding", "`rare`: threshold 0.5"):
        assert text in card, text
