"""``medcls ensemble``: two runs as ONE model, evaluated, exported (ONNX + INT8), predicted, served and explained."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medcls.cli import main
from medcls.errors import MedclsError, RunError
from medcls.experiments.ensemble import build_ensemble, fit_weights, train_ensemble
from medcls.runs import load_run


@pytest.fixture(scope="module")
def members(tmp_path_factory, make_cfg):
    """Two 1-epoch runs on 96 real images per split: different seeds, one with a wider ResNet."""
    from medcls import train

    root = tmp_path_factory.mktemp("members")
    runs = []
    for seed, arch in ((0, "resnet18"), (1, "resnet10t")):
        cfg = make_cfg(root, name=f"m{seed}", stem="small" if arch == "resnet18" else "default",
                       train={"epochs": 1, "warmup_epochs": 0.5}, eval={"batch_size": 64, "n_bootstrap": 100})
        cfg["seed"], cfg["model"]["name"] = seed, arch
        runs.append(train(cfg, run_dir=root / f"m{seed}"))
    return runs


@pytest.fixture(scope="module")
def ensemble_dir(members, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "ensemble"
    rc = main(["ensemble", str(members[0].path), str(members[1].path), "-o", str(out), "--weights", "val"])
    assert rc == 0
    return out


def test_ensemble_is_a_run_evaluated_with_cis(ensemble_dir, members):
    run = load_run(ensemble_dir)
    assert run.model_spec.architecture == "ensemble(resnet18+resnet10t)"
    m = json.loads((ensemble_dir / "eval-test" / "metrics.json").read_text())
    assert m["n"] == 96 and m["ci"]["auc"]["low"] <= m["auc"] <= m["ci"]["auc"]["high"]
    assert (ensemble_dir / "eval-test" / "report.html").is_file()
    card = (ensemble_dir / "eval-test" / "model_card.md").read_text()
    assert "ensemble of 2 models" in card and "`resnet10t`" in card
    info = json.loads((ensemble_dir / "ensemble.json").read_text())
    w = [x["weight"] for x in info["members"]]
    assert abs(sum(w) - 1) < 1e-6 and info["weighting"] == "val"
    assert run.postprocess("best").fitted_on == "val"  # the ensemble's own calibration


def test_output_is_the_weighted_mean_of_calibrated_member_probabilities(ensemble_dir, members):
    run = load_run(ensemble_dir)
    model, _ = run.build_model()
    x = torch.stack([members[0].preprocess(np.full((28, 28), v, np.uint8)) for v in (30, 120, 220)])
    info = json.loads((ensemble_dir / "ensemble.json").read_text())
    want = 0
    for r, m in zip(members, info["members"], strict=True):
        net, _ = r.build_model()
        T = r.postprocess("best").temperature
        assert m["temperature"] == pytest.approx(T)
        with torch.no_grad():
            want = want + m["weight"] * torch.softmax(net(x) / T, 1)
    with torch.no_grad():
        got = torch.softmax(model(x), 1)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def ensemble_bundle(ensemble_dir, tmp_path_factory):
    """The ensemble exported once (ONNX + static INT8 + OOD gate) by `medcls export`."""
    out = tmp_path_factory.mktemp("ens-bundle") / "bundle"
    assert main(["export", str(ensemble_dir), "-o", str(out), "--quantize", "int8", "--max-int8-auc-drop", "1"]) == 0
    return out


def test_exported_as_one_onnx_and_int8_predicted_and_explained(ensemble_dir, ensemble_bundle, tmp_path,
                                                                pneumonia_arrays):
    from medcls.explain import explain_image
    from medcls.inference import Predictor

    out = ensemble_bundle
    info = json.loads((out / "bundle.json").read_text())
    assert info["checks"]["onnx_parity"]["max_abs_prob_diff"] < 1e-4
    assert "int8" in info["checks"] and (out / "model.int8.onnx").is_file()
    assert info["checks"]["ood"]["features"] == 1024  # the two members' 512 features side by side
    import onnx

    graph = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["logits", "features"]  # one graph for the ensemble
    images = list(pneumonia_arrays["test_images"][:6])
    p_torch = [r["probabilities"] for r in Predictor.load(ensemble_dir).predict(images)]
    p_onnx = [r["probabilities"] for r in Predictor.load(out, backend="onnx").predict(images)]
    for a, b in zip(p_torch, p_onnx, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    r = explain_image(load_run(ensemble_dir), images[0], out_path=tmp_path / "cam.png", array_path=tmp_path / "cam.npy")
    assert r["layer"].startswith("members.0.") and ",members.1." in r["layer"]
    cam = np.load(tmp_path / "cam.npy")
    assert cam.shape == (28, 28) and cam.max() > cam.min()


def test_served_like_a_single_model(ensemble_bundle, pneumonia_arrays):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medcls.inference import Predictor
    from medcls.serve import ServeSettings, create_app

    from ..serve.test_app import png_bytes

    out = ensemble_bundle
    app = create_app(ServeSettings(bundle=str(out), max_wait_ms=1), Predictor.load(out, backend="onnx"))
    with TestClient(app) as c:
        assert c.get("/v1/model").json()["architecture"] == "ensemble(resnet18+resnet10t)"
        r = c.post("/v1/predict", files={"file": ("x.png", png_bytes(pneumonia_arrays["test_images"][0]))})
        assert r.status_code == 200 and r.json()["ood"]["available"]
        assert sum(r.json()["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    app = create_app(ServeSettings(bundle=str(out), max_wait_ms=1), Predictor.load(out, backend="torch"))
    with TestClient(app) as c:
        r = c.post("/v1/explain", files={"file": ("x.png", png_bytes(pneumonia_arrays["test_images"][0]))})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and len(r.content) > 1000
        assert "members" in r.headers["x-layer"]  # one layer per member


def _edited(run, dest, edit):
    """A copy of ``run`` whose model.json ``edit`` changed."""
    out = shutil.copytree(run.path, dest)
    spec = json.loads((out / "model.json").read_text())
    edit(spec)
    (out / "model.json").write_text(json.dumps(spec))
    return out


def test_members_that_differ_get_one_line_naming_what(members, tmp_path, capsys):
    odd = _edited(members[1], tmp_path / "odd", lambda s: s["dataset"].update(class_names=["healthy", "sick"]))
    assert main(["ensemble", str(members[0].path), str(odd), "-o", str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "differ in classes" in err and "'normal'" in err
    big = _edited(members[1], tmp_path / "big", lambda s: s["preprocess"].update(size=32))
    assert main(["ensemble", str(members[0].path), str(big), "-o", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "differ in preprocessing (size)" in err and "28" in err and "32" in err
    for argv, needle in ((["ensemble", str(members[0].path), "-o", str(tmp_path / "e3")], "at least 2 runs"),
                         (["ensemble", str(members[0].path), str(members[0].path), "-o", str(tmp_path / "e3")],
                          "is listed twice"),
                         (["ensemble", str(members[0].path), str(members[1].path)], "missing option -o"),
                         (["ensemble", str(members[0].path), str(members[1].path), "-o", str(tmp_path / "e4"),
                           "--weights", "best"], "--weights must be one of equal, val"),
                         (["ensemble", "--budget", "10m", "-o", str(tmp_path / "e5")], "add --members K")):
        assert main(argv) == 2
        assert needle in capsys.readouterr().err
    assert not any((tmp_path / f"e{i}").exists() for i in range(1, 6))  # nothing half-written


def test_existing_output_is_never_overwritten(members, ensemble_dir, capsys):
    with pytest.raises(RunError, match="already exists"):
        build_ensemble(members, ensemble_dir)
    assert main(["evaluate", str(ensemble_dir), "--checkpoint", "last"]) == 2
    assert "it has only the 'best' checkpoint" in capsys.readouterr().err


def test_val_weights_favour_the_better_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.where(y[:, None] == np.arange(2), 0.9, 0.1)
    noise = rng.uniform(0.2, 0.8, 400)
    bad = np.stack([noise, 1 - noise], 1)
    w = fit_weights(y, [bad, good])
    assert w[1] > 0.9 and w.sum() == pytest.approx(1)


def test_budgeted_recipe_trains_k_members_and_stops_at_the_budget(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path / "runs", name="k", limit=64, train={"epochs": 1}, eval={"n_bootstrap": 0})
    result = train_ensemble(cfg, tmp_path / "ens", members=2, budget="1h", evaluate_split="test")
    assert [m["seed"] for m in result.members] == [0, 1]
    assert all(m["run"].startswith(str((tmp_path / "ens" / "members").resolve())) for m in result.members)
    assert load_run(tmp_path / "ens" / "members" / "seed-1").config.seed == 1
    assert result.test is not None and result.test["n"] == 64
    with pytest.raises(MedclsError, match="allowed only 1 member"):  # one member takes more than 1 s
        train_ensemble(cfg, tmp_path / "ens2", members=3, budget="1s", evaluate_split=None)
