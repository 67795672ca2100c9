"""A multiclass model (BTXRD-style: normal, benign, malignant) validated on another centre's images: macro AUC,
accuracy, ECE, and each class's calibration against the rest; a temperature update for its recalibration."""

from __future__ import annotations

import pytest

from medcls.errors import ConfigError
from medcls.testing.multimodal import write_btxrd_like
from medcls.testing.shifts import shift
from medcls.validation import validate_model, write_validation


@pytest.fixture(scope="module")
def three_class(pneumonia_arrays, tmp_path_factory):
    """A 1-epoch tiny model on a BTXRD-style fixture, and a second fixture under a contrast shift."""
    from medcls import evaluate, train

    root = tmp_path_factory.mktemp("btx")
    xlsx, _ = write_btxrd_like(root / "dev", pneumonia_arrays["train_images"], n=300)
    cfg = {"name": "btx", "output_dir": str(root / "runs"),
           "data": {"source": f"btxrd:{xlsx.parent}", "min_val_size": 8, "test_fraction": 0.3},
           "transforms": {"image_size": 28, "strength": 0.0}, "model": {"name": "test_resnet"},
           "train": {"epochs": 1, "batch_size": 32, "progress": False, "amp": "off"}, "eval": {"n_bootstrap": 50}}
    run = train(cfg)
    evaluate(run, "test", device="cpu")
    site, _ = write_btxrd_like(root / "site", shift(pneumonia_arrays["test_images"][:240], "contrast", 1.0), n=240)
    return run, site.parent


def test_class_figures_with_cis_beside_the_internal_ones(three_class, tmp_path):
    run, site = three_class
    v = validate_model(run.path, f"btxrd:{site}", n_bootstrap=40)
    figs = v["external"]["figures"]
    for k in ("auc", "accuracy", "balanced_accuracy", "ece", "citl[benign]", "slope[malignant]", "oe[normal]"):
        assert figs[k]["low"] <= figs[k]["value"] <= figs[k]["high"] or k.startswith("slope")
    assert v["task"] == "multiclass" and v["events"] is None
    assert set(v["difference"]) >= {"auc", "citl[normal]"} and v["internal"]["n"] == 90
    assert set(v["sample_size"]["per_class"]) == {"normal", "benign", "malignant"}
    assert set(v["sites"]["sites"]) == {"1", "2", "3"}  # BTXRD's centres
    assert v.frame["decision"].isin(["normal", "benign", "malignant"]).all()
    out = write_validation(v, tmp_path / "validate-site")
    assert "calibration-in-the-large (0) · benign" in (out / "model_card.md").read_text()
    assert "Each class against the rest" in (out / "report.html").read_text()


def test_a_multiclass_model_is_recalibrated_by_temperature_only(three_class):
    run, site = three_class
    v = validate_model(run.path, f"btxrd:{site}", n_bootstrap=20, recalibrate="temperature")
    r = v["recalibration"]
    entry = v.postprocess["best"]
    assert entry["recalibration"]["method"] == "temperature"
    assert entry["temperature"] == pytest.approx(entry["recalibration"]["temperature_before"] / r["update"]["slope"])
    assert r["after"]["accuracy"]["value"] == pytest.approx(r["before"]["accuracy"]["value"])  # same arg-max
    with pytest.raises(ConfigError, match="a multiclass model takes --recalibrate temperature"):
        validate_model(run.path, f"btxrd:{site}", n_bootstrap=20, recalibrate="logistic")
