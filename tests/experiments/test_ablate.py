"""Honest test: on data where the label needs image AND metadata, every fusion beats either alone.

One ablation (``medcls.experiments.ablate``: same splits and seed for all five variants) is trained once for
the module; the bundle of the concat model must reproduce the evaluation's predictions exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medcls.testing.multimodal import image_only_ceiling, joint_config, make_joint_dataset

Q = 0.75  # P(view = frontal): the image-only ceiling AUC; metadata-only is 0.5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    from medcls.experiments.ablate import ablate

    root = tmp_path_factory.mktemp("joint")
    manifest = make_joint_dataset(root / "data", n_train=480, n_val=96, n_test=256, q=Q, seed=0)
    cfg = joint_config(manifest, root / "runs", epochs=6, model="test_resnet")
    result = ablate(cfg, n_bootstrap=200)
    return manifest, result


def test_every_fusion_beats_image_only_and_metadata_only(joint):
    _, result = joint
    auc = dict(zip(result.table["variant"], result.table["test_auc"], strict=True))
    ceiling = image_only_ceiling(Q)
    assert ceiling - 0.12 <= auc["none"] <= ceiling + 0.08, auc  # the image branch learns the planted feature
    assert auc["meta_only"] <= 0.65, auc  # metadata alone carries (almost) nothing
    for fusion in ("concat", "cross_attention", "gated"):
        assert auc[fusion] >= 0.88, (fusion, auc)
        assert auc[fusion] >= auc["none"] + 0.12, (fusion, auc)
        assert auc[fusion] >= auc["meta_only"] + 0.25, (fusion, auc)
    rows = result.table.set_index("variant")
    assert (rows.loc[["concat", "gated", "cross_attention"], "diff_low"] > 0).all()  # paired CI excludes 0


def test_ablation_table_files(joint):
    _, result = joint
    for ext in ("csv", "json", "md"):
        assert (result.path / f"ablation.{ext}").is_file()
    md = (result.path / "ablation.md").read_text()
    assert "image only" in md and "metadata only" in md and "cross-attention" in md
    table = pd.read_csv(result.path / "ablation.csv")
    assert list(table["variant"]) == ["none", "meta_only", "concat", "cross_attention", "gated"]
    assert (table["auc_low"] <= table["test_auc"]).all() and (table["test_auc"] <= table["auc_high"]).all()
    assert table["n_test"].nunique() == 1  # same test rows for every variant


def test_bundle_reproduces_evaluation(joint, tmp_path):
    """Train/inference parity: the bundle's image+metadata predictions equal predictions.csv (torch and ONNX)."""
    from medcls.data.sources import load_data
    from medcls.export import export_bundle
    from medcls.inference.predictor import Predictor
    from medcls.runs import load_run

    _, result = joint
    run = load_run(result.runs["concat"])
    info = export_bundle(run, tmp_path / "bundle")
    assert info["onnx_inputs"] == ["image", "numeric", "numeric_missing", "categorical", "present"]
    assert info["checks"]["onnx_parity"]["max_abs_prob_diff"] < 1e-4
    test = load_data(run.config.data).test
    expected = pd.read_csv(run.path / "eval-test" / "predictions.csv")
    meta = test.meta[["age", "sex", "view"]].to_dict("records")
    for backend in ("torch", "onnx"):
        pred = Predictor.load(tmp_path / "bundle", backend=backend)
        res = pred.predict([str(p) for p in test.paths], metadata=meta)
        p = np.array([r["probabilities"]["positive"] for r in res])
        assert np.abs(p - expected["prob_positive"].to_numpy()).max() < (1e-5 if backend == "torch" else 1e-4)
        assert res[0]["inputs_used"] == ["image", "metadata:age,sex,view"]
    # no metadata at all: still a prediction (learned "missing" embedding), and it says so
    bare = Predictor.load(tmp_path / "bundle").predict([str(test.paths[0])])[0]
    assert bare["inputs_used"] == ["image"] and abs(sum(bare["probabilities"].values()) - 1) < 1e-5


def test_gradcam_on_the_image_branch(joint, tmp_path):
    from medcls.explain import explain_image
    from medcls.runs import load_run

    manifest, result = joint
    run = load_run(result.runs["gated"])
    img = manifest.parent / "images" / "test_0000.png"
    out = explain_image(run, img, out_path=tmp_path / "cam.png", metadata={"view": "frontal", "age": 40})
    assert (tmp_path / "cam.png").is_file() and out["layer"].startswith("net.")


def test_gradcam_leaves_a_fused_model_in_eval_mode(joint):
    """The image-branch wrapper must not switch the model to training (BatchNorm would then update its
    running statistics, and fail on a batch of one)."""
    from medcls.explain import compute_cam
    from medcls.inference.predictor import Predictor
    from medcls.runs import load_run

    manifest, result = joint
    run = load_run(result.runs["gated"])
    model, _ = run.build_model()
    pred = Predictor(run.model_spec, run.postprocess("best"), model=model, inputs=run.inputs)
    side_inputs, _ = pred.encode_inputs(1, [{"view": "frontal", "age": 40}])
    x = pred.preprocess(np.asarray(Image.open(manifest.parent / "images" / "test_0000.png"))).unsqueeze(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        compute_cam(model, x, side_inputs={k: torch.as_tensor(v) for k, v in side_inputs.items()})
        assert not any(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_markdown_table_formats_cis_and_differences():
    """``ablation.md`` from a table: AUC [CI] to 3 decimals, signed ΔAUC, an en dash for what is undefined."""
    from medcls.experiments.ablate import to_markdown

    table = pd.DataFrame([
        {"model": "image only", "inputs": "image", "test_auc": 0.75012, "auc_low": 0.70049, "auc_high": 0.8,
         "accuracy": 0.7, "balanced_accuracy": np.nan, "auc_vs_image": np.nan, "diff_low": np.nan,
         "diff_high": np.nan, "p_value": np.nan},
        {"model": "concat", "inputs": "image + metadata (age)", "test_auc": 0.91, "auc_low": 0.88, "auc_high": 0.94,
         "accuracy": 0.85, "balanced_accuracy": 0.84, "auc_vs_image": 0.15988, "diff_low": -0.012, "diff_high": 0.2,
         "p_value": 0.0005}])
    assert to_markdown(table, title="t").splitlines() == [
        "**t**", "",
        "| model | inputs | test AUC [95% CI] | accuracy | balanced acc. | ΔAUC vs image only [95% CI] | p |",
        "|---|---|---|---|---|---|---|",
        "| image only | image | 0.750 [0.700, 0.800] | 0.700 | – |  |  |",
        "| concat | image + metadata (age) | 0.910 [0.880, 0.940] | 0.850 | 0.840 | +0.160 [-0.012, 0.200] | 0.001 |"]
