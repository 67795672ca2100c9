"""A small fused model with a tiny random BERT (no download): text path, LR groups, bundle, REST API."""

from __future__ import annotations

import io
import json

import pytest

pytest.importorskip("fastapi")  # the 'serve' extra
pytest.importorskip("transformers")  # the 'text' extra
import torch
from fastapi.testclient import TestClient
from PIL import Image

from medcls.multimodal.text import make_tiny_bert
from medcls.testing.multimodal import joint_config, make_joint_dataset


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from medcls import evaluate, train

    root = tmp_path_factory.mktemp("text")
    bert = make_tiny_bert(root / "tiny-bert")
    manifest = make_joint_dataset(root / "data", n_train=64, n_val=32, n_test=32, seed=1)
    cfg = joint_config(manifest, root / "runs", fusion="concat", epochs=1, model="test_resnet", text_encoder=bert)
    cfg["inputs"]["freeze_text"] = False
    cfg["train"]["text_lr_scale"] = 0.5
    run = train(cfg)
    evaluate(run, "test")
    return run, bert, manifest


def test_fine_tuned_text_encoder_gets_its_own_lr(text_run):
    from medcls.artefact import ModelSpec
    from medcls.config import build_config
    from medcls.data.sources import load_data
    from medcls.multimodal import InputEncoder

    run, _, _ = text_run
    assert (run.path / "text_encoder" / "tokenizer.json").is_file() or (run.path / "text_encoder" / "vocab.txt").is_file()
    data = load_data(run.config.data)
    for freeze in (False, True):
        cfg = build_config(run.config.to_dict(), [f"inputs.freeze_text={str(freeze).lower()}"])
        enc = InputEncoder.fit(cfg.inputs, data.train)
        model = ModelSpec.for_config(cfg, data.spec, enc).build(text_source=str(run.artefact.text_dir))
        groups = {g["name"]: g for g in model.param_groups(1e-3, 0.2, 0.05, 0.5)}
        text_ids = {id(p) for p in model.text_model.parameters()}
        if freeze:
            assert not any("text" in n for n in groups)
            assert not any(id(p) in text_ids for g in groups.values() for p in g["params"])
        else:
            assert groups["text"]["lr"] == pytest.approx(5e-4) and groups["head"]["lr"] == pytest.approx(1e-3)
            assert groups["backbone"]["lr"] == pytest.approx(2e-4)
            assert {id(p) for n in ("text", "text_nowd") for p in groups[n]["params"]} == text_ids


def test_frozen_text_encoder_does_not_change(text_run, tmp_path):
    from medcls import train

    run, bert, _ = text_run
    raw = run.config.to_dict()
    raw["inputs"]["freeze_text"] = True
    raw["output_dir"] = str(tmp_path)
    frozen = train(raw)
    m, _ = frozen.build_model()
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(bert))
    for (k, v), (_, w) in zip(m.text_model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    tuned, _ = run.build_model()  # fine-tuned at text_lr_scale: the encoder moved
    assert any(not torch.equal(v, w) for v, w in zip(tuned.text_model.state_dict().values(),
                                                      ref.state_dict().values(), strict=True))


def test_long_text_is_truncated_and_counted(text_run):
    run, _, _ = text_run
    enc = run.inputs
    with pytest.warns(UserWarning, match="1 of 2 text"):
        import pandas as pd

        arrays, report = enc.encode_frame(pd.DataFrame({"age": [1.0, 2.0], "sex": ["M", "F"], "view": ["frontal"] * 2,
                                                        "report": ["knee " * 200, "short"]}), where="test")
    assert report["text"]["truncated"] == 1 and arrays["input_ids"].shape == (2, 16)


@pytest.fixture(scope="module")
def client(text_run, tmp_path_factory):
    from medcls.export import export_bundle
    from medcls.inference.predictor import Predictor
    from medcls.serve import ServeSettings, create_app

    run, _, _ = text_run
    out = tmp_path_factory.mktemp("tb") / "bundle"
    info = export_bundle(run, out)
    assert "text_encoder/config.json" in info["files"] and info["checks"]["onnx_parity"]["max_abs_prob_diff"] < 1e-4
    pred = Predictor.load(out, backend="onnx")
    with TestClient(create_app(ServeSettings(bundle=str(out)), predictor=pred)) as c:
        yield c, pred


def _png(manifest) -> bytes:
    img = Image.open(manifest.parent / "images" / "test_0000.png")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_rest_metadata_and_text(client, text_run):
    c, pred = client
    _, _, manifest = text_run
    info = c.get("/v1/model").json()
    assert info["inputs"]["expected_keys"] == ["age", "sex", "view", "report"]
    meta = {"age": 61, "sex": "F", "view": "lateral", "report": "lateral view of the knee"}
    r = c.post("/v1/predict", files={"file": ("x.png", _png(manifest), "image/png")}, data={"metadata": json.dumps(meta)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["inputs_used"] == ["image", "metadata:age,sex,view", "text"]
    direct = pred.predict([_png(manifest)], metadata=[meta])[0]["probabilities"]
    assert body["probabilities"] == pytest.approx(direct, abs=1e-5)
    r = c.post("/v1/predict", files={"file": ("x.png", _png(manifest), "image/png")})  # no metadata: still answered
    assert r.status_code == 200 and r.json()["inputs_used"] == ["image"]


def test_rest_unknown_metadata_keys_are_422(client, text_run):
    c, _ = client
    _, _, manifest = text_run
    r = c.post("/v1/predict", files={"file": ("x.png", _png(manifest), "image/png")},
               data={"metadata": json.dumps({"agee": 3, "weight": 70})})
    assert r.status_code == 422
    msg = r.json()["error"]["message"]
    assert "'agee'" in msg and "'weight'" in msg and "age, sex, view, report" in msg
    r = c.post("/v1/predict", files={"file": ("x.png", _png(manifest), "image/png")}, data={"metadata": "[1, 2]"})
    assert r.status_code == 422
    r = c.post("/v1/predict", files={"file": ("x.png", _png(manifest), "image/png")},
               data={"metadata": json.dumps({"age": "old"})})
    assert r.status_code == 422 and "non-numeric" in r.json()["error"]["message"]


def test_offline_uncached_text_encoder_is_one_clear_error(monkeypatch):
    from medcls.errors import ModelError
    from medcls.multimodal.text import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the local cache"):
        load_tokenizer("medcls-test/no-such-model-here")


def test_web_page_has_the_metadata_field(client):
    c, _ = client
    page = c.get("/").text
    assert 'id="metadata"' in page and 'form.append("metadata"' in page


def test_cli_predict_with_metadata(text_run, capsys):
    from medcls.cli.main import main

    run, _, manifest = text_run
    img = str(manifest.parent / "images" / "test_0001.png")
    assert main(["predict", str(run.path), img, "--metadata", '{"age": 30, "view": "frontal"}']) in (0, None)
    assert "test_0001.png" in capsys.readouterr().out
    assert main(["predict", str(run.path), img, "--metadata", '{"viewz": "frontal"}']) == 2
    assert "unknown metadata key(s) ['viewz']" in capsys.readouterr().err


def test_rest_batch_takes_metadata_per_file(client, text_run):
    c, pred = client
    _, _, manifest = text_run
    meta = {"age": 61, "sex": "F", "view": "lateral", "report": "lateral view of the knee"}
    files = [("files", ("a.png", _png(manifest), "image/png")), ("files", ("b.png", _png(manifest), "image/png"))]
    r = c.post("/v1/predict/batch", files=files, data={"metadata": json.dumps([meta, None])})
    assert r.status_code == 200, r.text
    a, b = r.json()["results"]
    assert a["inputs_used"] == ["image", "metadata:age,sex,view", "text"] and b["inputs_used"] == ["image"]
    assert a["probabilities"] == pytest.approx(pred.predict([_png(manifest)], metadata=[meta])[0]["probabilities"],
                                               abs=1e-5)
    for bad, expect in ((json.dumps([meta]), "array of 2"), (json.dumps(meta), "got dict"),
                        (json.dumps([meta, 3]), "metadata[1]"), ("[{", "JSON array")):
        r = c.post("/v1/predict/batch", files=files, data={"metadata": bad})
        assert r.status_code == 422 and expect in r.json()["error"]["message"], (bad, r.text)
    r = c.post("/v1/predict/batch", files=files, data={"metadata": json.dumps([{"agee": 1}, None])})
    assert r.status_code == 200  # a bad file's metadata fails that file only
    first, second = r.json()["results"]
    assert first["error"]["status"] == 422 and "'agee'" in first["error"]["message"] and "probabilities" in second


def test_rest_explain_takes_the_same_metadata_as_predict(client, text_run):
    c, pred = client
    _, _, manifest = text_run
    meta = {"age": 61, "sex": "F", "view": "lateral", "report": "lateral view of the knee"}
    files = {"file": ("a.png", _png(manifest), "image/png")}
    r = c.post("/v1/explain", files=files, data={"metadata": json.dumps(meta)})
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", r.text
    expected = pred.predict([_png(manifest)], metadata=[meta])[0]["probabilities"]
    assert float(r.headers["X-Probability"]) == pytest.approx(max(expected.values()), abs=1e-4)
    assert r.headers["X-Predicted-Class"] == max(expected, key=expected.get)
    plain = pred.predict([_png(manifest)])[0]["probabilities"]  # without metadata: "missing" embeddings
    assert max(plain.values()) != pytest.approx(max(expected.values()), abs=1e-4)
    r = c.post("/v1/explain", files=files)
    assert float(r.headers["X-Probability"]) == pytest.approx(max(plain.values()), abs=1e-4)
    for bad, expect in ((json.dumps({"agee": 1}), "'agee'"), ("[1]", "JSON object"), ("{", "JSON object")):
        r = c.post("/v1/explain", files=files, data={"metadata": bad})
        assert r.status_code == 422 and expect in r.json()["error"]["message"], (bad, r.text)
    page = c.get("/").text  # the web page explains what it predicted: the same metadata goes to /v1/explain
    assert 'explain(file, form.get("metadata"))' in page and 'form.append("metadata", metadata)' in page


def test_cli_explain_with_metadata(text_run, tmp_path, capsys):
    from medcls.cli.main import main

    run, _, manifest = text_run
    img = str(manifest.parent / "images" / "test_0001.png")
    out = tmp_path / "cam.png"
    assert main(["explain", str(run.path), img, "-o", str(out), "--metadata", '{"age": 30, "view": "frontal"}']) in (0, None)
    assert out.is_file() and "predicted" in capsys.readouterr().out
    assert main(["explain", str(run.path), img, "-o", str(out), "--metadata", "[1]"]) == 2
    assert "--metadata must be a JSON object" in capsys.readouterr().err
