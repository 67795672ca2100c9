"""`medcls.validate` on PneumoniaMNIST test images: through the same Predictor as everywhere (its probabilities
are the evaluation's), under an acquisition shift built here (gamma) calibration-in-the-large moves away from 0;
a BTXRD-style manifest with centres gives per-site figures; a site class the model lacks is one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcls import validate
from medcls.errors import DataError, RunError
from medcls.testing.shifts import shift
from medcls.validation import validate_model

SOURCE = "medmnist:pneumoniamnist"


def _npz(path, arrays, images):
    """A MedMNIST-layout file whose test images are ``images`` (the other splits kept)."""
    np.savez(path, **{**arrays, "test_images": images})
    return path


@pytest.fixture(scope="module")
def gamma_npz(pneumonia_arrays, tmp_path_factory):
    """PneumoniaMNIST's test images under another detector's gamma curve (severity 1.5)."""
    return _npz(tmp_path_factory.mktemp("shift") / "gamma.npz", pneumonia_arrays,
                shift(pneumonia_arrays["test_images"], "gamma", 1.5))


@pytest.fixture(scope="module")
def plain(evaluated_run, pneumonia_npz):
    return validate_model(evaluated_run.path, SOURCE, options={"path": str(pneumonia_npz)}, split="test",
                          n_bootstrap=200)


@pytest.fixture(scope="module")
def shifted(evaluated_run, gamma_npz):
    return validate_model(evaluated_run.path, SOURCE, options={"path": str(gamma_npz)}, split="test",
                          n_bootstrap=200)


def test_probabilities_are_the_evaluations_own(plain, evaluated_run):
    """The run's test evaluation saw a subset of these images: the same ids get the same probabilities."""
    ev = pd.read_csv(evaluated_run.path / "eval-test" / "predictions.csv")
    both = ev.merge(plain.frame, on="id", suffixes=("_eval", "_val"))
    assert len(both) == len(ev) > 100
    np.testing.assert_allclose(both["prob_pneumonia_eval"], both["prob_pneumonia_val"], atol=1e-5)
    assert (both["decision_eval"] == both["decision_val"]).all()


def test_the_gamma_shift_moves_calibration_in_the_large_away_from_0(plain, shifted):
    before, after = plain["external"]["figures"]["citl"], shifted["external"]["figures"]["citl"]
    assert after["value"] > before["value"] + 0.3
    assert after["low"] > 0
    assert shifted["external"]["figures"]["oe"]["value"] > plain["external"]["figures"]["oe"]["value"]
    diff = shifted["difference"]["citl"]
    assert diff["external"] == after["value"] and diff["low"] > 0  # beyond the internal figure, with its CI


def test_internal_figures_come_from_the_runs_test_evaluation(shifted, evaluated_run):
    ev = json.loads((evaluated_run.path / "eval-test" / "metrics.json").read_text())
    assert shifted["internal"]["n"] == ev["n"]
    assert shifted["internal"]["figures"]["auc"]["value"] == pytest.approx(ev["auc"], abs=1e-6)
    op = shifted["external"]["threshold_transfer"]["youden"]
    assert op["sensitivity"]["chosen"] is not None and "flags" in op


def test_case_mix_and_sample_size(shifted):
    mix = shifted["case_mix"]
    assert mix["prevalence_here"]["pneumonia"] == pytest.approx(390 / 624)
    assert set(mix["prevalence_development"]) == {"train", "val", "test"}
    here, dev = mix["images_here"], mix["images_development"]
    assert here["height"]["median"] == 28 and here["channels"] == {"1": 624}
    assert here["intensity_mean"]["median"] < dev["intensity_mean"]["median"] - 0.05  # gamma darkens mid-tones
    assert mix["ood"]["available"] is False  # a run directory has no gate
    assert shifted["sample_size"]["required"]["oe"] > 0 and shifted["warnings"]


def test_the_bundles_gate_flags_more_of_the_shifted_images(bundle, gamma_npz, pneumonia_npz):
    path, _ = bundle
    ood = validate_model(path, SOURCE, options={"path": str(gamma_npz)}, split="test", n_bootstrap=50)
    gate = ood["case_mix"]["ood"]
    assert gate["available"] and gate["flagged_here"] > 2 * gate["flagged_development_val"]
    assert {t["test"] for t in gate["drift"]["tests"]} >= {"ood_score", "features", "flagged"}
    assert ood["internal"] is None and "--internal" in ood["notes"][-1]
    assert "ood_flagged" in ood.frame.columns


def test_a_source_with_a_class_the_model_lacks_is_one_line(evaluated_run, pneumonia_npz):
    with pytest.raises(DataError) as e:
        validate_model(evaluated_run.path, SOURCE, options={"path": str(pneumonia_npz), "labels": ["normal", "covid"]},
                       split="test", n_bootstrap=20)
    assert "'covid' that the model lacks" in str(e.value) and "'pneumonia' that" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def centres(pneumonia_arrays, tmp_path_factory):
    """A BTXRD-style manifest: 300 test images as PNG files, labels spelled by the site, three centres of
    150, 100 and 50 cases, and an unlabelled-quality class to drop."""
    root = tmp_path_factory.mktemp("centres")
    rows = []
    site_label = {0: "NORMAL", 1: "PNEUMONIA"}
    for i in range(300):
        Image.fromarray(pneumonia_arrays["test_images"][i]).save(root / f"img{i}.png")
        label = site_label[int(pneumonia_arrays["test_labels"][i, 0])] if i % 30 else "UNREADABLE-FILM"
        rows.append({"path": f"img{i}.png", "label": label, "center": "A" if i < 150 else "B" if i < 250 else "C"})
    pd.DataFrame(rows).to_csv(root / "dataset.csv", index=False)
    (root / "map.yaml").write_text("UNREADABLE-FILM: null\n")
    return root


def test_sites_label_map_and_the_written_folder(evaluated_run, centres, tmp_path):
    v = validate(evaluated_run.path, f"csv:{centres / 'dataset.csv'}", label_map=centres / "map.yaml",
                 site_column="center", n_bootstrap=100, out_dir=tmp_path, name="centres")
    m = v.metrics
    assert m["n"] == 290 and m["source"]["n_dropped"] == 10
    sites = m["sites"]
    assert [s["n"] for s in sites["sites"].values()] == [145, 96, 49] and sites["smallest"] == "C"
    assert all(s["small"] for s in sites["sites"].values())  # none has 100 events and 100 non-events
    assert sites["heterogeneity"]["auc"]["sites"] == 3 and 0 <= sites["heterogeneity"]["auc"]["i2"] <= 1
    out = tmp_path / "validate-centres"
    assert v.out == out and json.loads((out / "metrics.json").read_text())["n"] == 290
    frame = pd.read_csv(out / "predictions.csv")
    assert list(frame.columns[:4]) == ["id", "site", "label", "site_label"] and len(frame) == 290
    assert set(frame["label"]) == {"normal", "pneumonia"}
    html = (out / "report.html").read_text()
    for title in ("Discrimination and calibration", "Case mix and shift", "Site A", "Site B", "Site C"):
        assert f"<h2>{title}</h2>" in html
    assert html.count('<span class="tag">small</span>') == 3 and "data:image/png;base64," in html
    card = (out / "model_card.md").read_text()
    assert card.startswith("# Model card") and "## Not for clinical use" in card  # the run's own card, then:
    assert "## External validation" in card and "- **Sites (center):** 3" in card
    assert "| calibration-in-the-large (0) |" in card
    with pytest.raises(RunError, match="never overwritten"):
        validate(evaluated_run.path, f"csv:{centres / 'dataset.csv'}", label_map=centres / "map.yaml",
                 n_bootstrap=20, out_dir=tmp_path, name="centres")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".validate-")]


@pytest.fixture(scope="module")
def recalibrated(evaluated_run, gamma_npz):
    return validate_model(evaluated_run.path, SOURCE, options={"path": str(gamma_npz)}, split="test",
                          n_bootstrap=200, recalibrate="logistic", fit_fraction=0.5, seed=3)


def test_logistic_recalibration_on_one_half_brings_citl_back_on_the_other(recalibrated):
    r = recalibrated["recalibration"]
    before, after = r["before"]["citl"], r["after"]["citl"]
    assert before["low"] > 0.5  # off on the held-out half before
    assert abs(after["value"]) < 0.25 and after["low"] < 0 < after["high"]
    assert r["change"]["citl"]["high"] < 0  # the change, on the same resamples, is below 0
    assert after["value"] == pytest.approx(r["change"]["citl"]["external"])
    parts = recalibrated.frame["part"]
    assert (parts == "fit").sum() == r["fitted_on"]["n"] == 312 and (parts == "held-out").sum() == r["held_out"]["n"]
    for k in ("sensitivity", "specificity"):  # the operating point moved with the scale: the same decisions
        assert r["after"][k]["value"] == pytest.approx(r["before"][k]["value"])


def test_the_recalibration_is_a_new_postprocess_entry_that_says_what_it_was_fitted_on(recalibrated, evaluated_run):
    from medcls.artefact import Postprocess

    entry = recalibrated.postprocess["best"]
    post = Postprocess.from_dict(entry)
    assert post.recalibration["method"] == "logistic" and post.recalibration["fitted_on"]["seed"] == 3
    assert post.recalibration["fitted_on"]["source"] == SOURCE and "RECALIBRATED (logistic)" in post.notes[-1]
    stored = evaluated_run.postprocess("best")
    assert stored.recalibration is None and post.temperature == stored.temperature  # the run's own is untouched
    assert post.threshold != stored.threshold
    col = "prob_pneumonia_recalibrated"
    p = recalibrated.frame["prob_pneumonia"].to_numpy()
    from medcls.metrics.external import recalibrate

    u = post.recalibration
    np.testing.assert_allclose(recalibrated.frame[col], recalibrate(p, u["intercept"], u["slope"]), atol=1e-5)


def test_temperature_cannot_fix_the_mean_risk_and_says_so(evaluated_run, gamma_npz):
    v = validate_model(evaluated_run.path, SOURCE, options={"path": str(gamma_npz)}, split="test", n_bootstrap=50,
                       recalibrate="temperature")
    r = v["recalibration"]
    assert abs(r["after"]["citl"]["value"]) > 0.3 and any("cannot move the mean risk" in n for n in r["notes"])


def test_a_btxrd_source_is_validated_per_centre_with_two_labels_mapped_to_one(evaluated_run, pneumonia_arrays,
                                                                              tmp_path):
    from medcls.testing.multimodal import write_btxrd_like

    xlsx, kind = write_btxrd_like(tmp_path / "BTXRD", pneumonia_arrays["test_images"], n=160)
    v = validate_model(evaluated_run.path, f"btxrd:{xlsx.parent}", n_bootstrap=30,
                       label_map={"benign": "pneumonia", "malignant": "pneumonia"})
    assert v["source"]["label_mapping"] == {"normal": "normal", "benign": "pneumonia", "malignant": "pneumonia"}
    assert v["events"] == int((kind > 0).sum()) and "sites: BTXRD's center column" in v["notes"]
    assert v["sites"]["column"] == "center" and set(v["sites"]["sites"]) == {"1", "2", "3"}
    sizes = {k: s["n"] for k, s in v["sites"]["sites"].items()}
    assert sizes == {"1": 120, "2": 20, "3": 20} and sizes[v["sites"]["smallest"]] == 20
    assert set(v.frame["site_label"]) == {"normal", "benign", "malignant"}


def test_a_folder_source_with_site_spelt_class_folders(evaluated_run, pneumonia_arrays, tmp_path):
    """The Kaggle layout: NORMAL/ and PNEUMONIA/ folders (class names matched ignoring case)."""
    for i in range(60):
        label = ("NORMAL", "PNEUMONIA")[int(pneumonia_arrays["test_labels"][i, 0])]
        (tmp_path / "site" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pneumonia_arrays["test_images"][i]).save(tmp_path / "site" / label / f"{i}.png")
    v = validate_model(evaluated_run.path, f"folder:{tmp_path / 'site'}", n_bootstrap=20)
    assert v["n"] == 60 and v["source"]["label_mapping"] == {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
    assert "site label 'NORMAL' counted as 'normal'" in v["notes"]
    bare = validate_model(evaluated_run.path, str(tmp_path / "site"), n_bootstrap=20)  # as predict takes folders
    assert bare["source"]["source"] == f"folder:{tmp_path / 'site'}" and bare["n"] == 60


def test_internal_figures_only_of_the_same_checkpoint(evaluated_run, pneumonia_npz):
    v = validate_model(evaluated_run.path, SOURCE, options={"path": str(pneumonia_npz)}, split="test",
                       checkpoint="last", n_bootstrap=20)
    assert v["internal"] is None and v["difference"] is None
    assert "evaluated the 'best' checkpoint, this validation the 'last' one" in v["notes"][-1]
