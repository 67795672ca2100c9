"""Macenko/Reinhard stain normalisation: maths, robustness, config, CLI, and the run -> bundle -> serving path."""

from __future__ import annotations

import io
import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from medcls.cli.main import main
from medcls.errors import ConfigError, DataError
from medcls.transforms import Preprocess, PreprocessConfig, StainNormalizer, fit_stain
from medcls.transforms.stain import _macenko_estimate, load_stain_reference, resolve_stain, tissue_mask

H_OD = np.array([0.65, 0.70, 0.29])  # haematoxylin / eosin optical density vectors (Ruifrok & Johnston)
E_OD = np.array([0.07, 0.99, 0.11])
SHIFTED = (np.array([0.45, 0.80, 0.40]), np.array([0.20, 0.95, 0.25]), (1.4, 0.7))  # another lab's stains


def he_patch(h_vec=H_OD, e_vec=E_OD, scale=(1.0, 1.0), *, seed: int = 0, size: int = 96, background: float = 0.3):
    """Synthetic H&E patch: two stain OD vectors mixed by smooth concentration maps, some white background."""
    rng = np.random.default_rng(seed)
    h_vec, e_vec = (np.asarray(v, float) / np.linalg.norm(v) for v in (h_vec, e_vec))

    def field(sigma, mean, spread):
        f = gaussian_filter(rng.random((size, size)), sigma)
        return np.clip((f - f.mean()) / f.std() * spread + mean, 0, None)

    ch, ce = field(3, 0.6, 0.5) * scale[0], field(5, 0.8, 0.4) * scale[1]
    mask = gaussian_filter(rng.random((size, size)), 8)
    mask = mask > np.quantile(mask, background)
    od = (ch[..., None] * h_vec + ce[..., None] * e_vec) * mask[..., None]
    img = 250 * np.exp(-od) + rng.normal(0, 2, od.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def shifted_patch(seed: int = 1, size: int = 96):
    return he_patch(*SHIFTED, seed=seed, size=size)


def mean_od(img: np.ndarray) -> np.ndarray:
    """Mean optical density per channel over tissue pixels."""
    od = -np.log((img.astype(float) + 1) / 240)
    return od[tissue_mask(img)].mean(0)


def stain_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) between the H and E vectors Macenko estimates on two images."""
    ha, hb = _macenko_estimate(a, 240, 1, 0.15)[0], _macenko_estimate(b, 240, 1, 0.15)[0]
    cos = (ha * hb).sum(0) / np.linalg.norm(ha, axis=0) / np.linalg.norm(hb, axis=0)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def lab_stats(img: np.ndarray) -> np.ndarray:
    from torchstain.numpy.utils import lab_split, rgb2lab

    chans = lab_split(rgb2lab(img.astype(np.float32) / 255))
    return np.array([[c.mean(), c.std()] for c in chans])


@pytest.fixture(scope="module")
def ref():
    return he_patch(seed=0)


# ------------------------------------------------------------------------------------------------ maths
@pytest.mark.parametrize("seed", [0, 3])
def test_macenko_estimate_matches_torchstain(seed):
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    img = he_patch(seed=seed) if seed == 0 else shifted_patch(seed)
    oracle = NumpyMacenkoNormalizer()
    oracle.fit(img, Io=240, alpha=1, beta=0.15)
    he, max_c, _ = _macenko_estimate(img, 240, 1, 0.15)
    np.testing.assert_allclose(he, oracle.HERef, atol=1e-9)
    np.testing.assert_allclose(max_c, oracle.maxCRef, atol=1e-9)
    # the fitted H column is close to the haematoxylin vector the patch was made with
    assert stain_angles(img, img)[0] == pytest.approx(0, abs=1e-6)
    h_true = (H_OD if seed == 0 else SHIFTED[0]) / np.linalg.norm(H_OD if seed == 0 else SHIFTED[0])
    assert np.degrees(np.arccos(he[:, 0] @ h_true)) < 5


def test_macenko_maps_shifted_patch_closer_to_reference(ref):
    params = fit_stain(ref, "macenko")
    src = shifted_patch()
    out = StainNormalizer("macenko", params)(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    before, after = np.linalg.norm(mean_od(src) - mean_od(ref)), np.linalg.norm(mean_od(out) - mean_od(ref))
    assert after < 0.7 * before, (before, after)
    ang_before, ang_after = stain_angles(src, ref), stain_angles(out, ref)
    assert ang_before.max() > 5 and ang_after.max() < 2, (ang_before, ang_after)


def test_reinhard_maps_shifted_patch_closer_to_reference(ref):
    params = fit_stain(ref, "reinhard")
    src = shifted_patch()
    out = StainNormalizer("reinhard", params)(src)
    before, after = np.linalg.norm(mean_od(src) - mean_od(ref)), np.linalg.norm(mean_od(out) - mean_od(ref))
    assert after < 0.6 * before, (before, after)
    np.testing.assert_allclose(lab_stats(out)[:, 0], params["lab_mean"], atol=2.0)  # LAB means matched
    np.testing.assert_allclose(lab_stats(out)[:, 1], params["lab_std"], rtol=0.1)
    assert np.abs(lab_stats(src)[:, 0] - params["lab_mean"]).max() > 5


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_reference_normalised_to_itself_changes_little(ref, method):
    out = StainNormalizer(method, fit_stain(ref, method))(ref)
    tissue = tissue_mask(ref)
    assert np.abs(out.astype(int) - ref)[tissue].mean() < 3


# ------------------------------------------------------------------------------------------------ robustness
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_background_flat_and_gray_images_pass_unchanged_and_are_counted(ref, method):
    norm = StainNormalizer(method, fit_stain(ref, method))
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("medcls")
    logger.addHandler(handler)
    try:
        white = np.full((96, 96, 3), 250, np.uint8)
        white[40:44, 40:44] = (120, 60, 140)  # a speck of tissue, far below 1 %
        flat = np.full((96, 96, 3), (120, 60, 140), np.uint8)  # all "tissue", one colour
        gray = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
        for img in (white, white, flat, flat, gray):
            with np.errstate(all="raise"):  # no silent NaN/overflow inside
                assert np.array_equal(norm(img), img)
    finally:
        logger.removeHandler(handler)
    assert norm.skipped == {"less than 1% tissue": 2, "degenerate stain estimate": 2, "grayscale image": 1}
    assert len(records) == 3 and all("skipped" in r for r in records)  # each reason logged once


def test_bad_images_and_references(ref):
    with pytest.raises(DataError, match=r"only 0\.0% of the pixels are tissue.*at least 5%"):
        fit_stain(np.full((64, 64, 3), 245, np.uint8), "macenko", name="blank.png")
    with pytest.raises(DataError, match=r"needs an RGB image \(H, W, 3\), got shape \(64, 64\)"):
        fit_stain(np.zeros((64, 64), np.uint8), "reinhard")
    with pytest.raises(DataError, match="needs 8-bit RGB, got uint16"):
        StainNormalizer("macenko", fit_stain(ref, "macenko"))(ref.astype(np.uint16))
    with pytest.raises(DataError, match="degenerate"):
        fit_stain(np.full((64, 64, 3), (120, 60, 140), np.uint8), "macenko")
    with pytest.raises(DataError, match="nearly flat"):
        fit_stain(np.full((64, 64, 3), (120, 60, 140), np.uint8), "reinhard")


def test_bad_params_are_config_errors(ref):
    good = fit_stain(ref, "macenko")
    with pytest.raises(ConfigError, match="stain=macenko needs stain_params"):
        PreprocessConfig(size=32, in_chans=3, stain="macenko")
    with pytest.raises(ConfigError, match=r"stain must be one of none, macenko, reinhard, got 'macenk'.*'macenko'"):
        PreprocessConfig(size=32, in_chans=3, stain="macenk", stain_params=good)
    with pytest.raises(ConfigError, match=r"stain_params\['stain_matrix'\].*shape \(3, 2\)"):
        PreprocessConfig(size=32, in_chans=3, stain="macenko", stain_params={**good, "stain_matrix": [[1, 2, 3]]})
    with pytest.raises(ConfigError, match=r"must hold 'lab_mean'"):
        PreprocessConfig(size=32, in_chans=3, stain="reinhard", stain_params=good)
    with pytest.raises(ConfigError, match="stain is 'none'"):
        PreprocessConfig(size=32, in_chans=3, stain_params=good)


# ------------------------------------------------------------------------------------------------ Preprocess
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_preprocess_config_round_trips_through_json(ref, method):
    cfg = PreprocessConfig(size=48, in_chans=3, stain=method, stain_params=fit_stain(ref, method))
    again = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    img = shifted_patch()
    a, b = Preprocess(cfg)(img), Preprocess(again)(img)
    assert torch.equal(a, b) and a.shape == (3, 48, 48)
    plain = Preprocess(PreprocessConfig(size=48, in_chans=3))
    # the stain step runs on the native-size RGB image, before the resize
    assert torch.equal(a, plain(Preprocess(cfg).stain(img)))
    assert not torch.allclose(a, plain(img), atol=0.02)


# ------------------------------------------------------------------------------------------------ config + files
def test_resolve_stain_from_image_and_json(ref, tmp_path, caplog):
    Image.fromarray(ref).save(tmp_path / "ref.png")
    params = resolve_stain("macenko", str(tmp_path / "ref.png"), channels=3, dataset="pcam")
    assert params["stain_matrix"] == fit_stain(ref, "macenko")["stain_matrix"]
    assert params["source"].startswith("ref.png sha256:")
    assert resolve_stain("none", None, channels=1, dataset="x") is None
    with pytest.raises(ConfigError, match=r"transforms\.stain=macenko normalises H&E colour, but dataset 'xr' has 1"):
        resolve_stain("macenko", str(tmp_path / "ref.png"), channels=1, dataset="xr")
    with pytest.raises(ConfigError, match=r"needs transforms\.stain_reference"):
        resolve_stain("reinhard", None, channels=3, dataset="pcam")
    with pytest.raises(ConfigError, match=r"transforms\.stain_reference: file not found: .*nope\.png"):
        resolve_stain("macenko", str(tmp_path / "nope.png"), channels=3, dataset="pcam")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="not a stain reference written by"):
        load_stain_reference(tmp_path / "other.json", "macenko")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_stain_reference(tmp_path / "broken.json", "macenko")
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tmp_path / "white.png")
    with pytest.raises(DataError, match="white.png: only 0.0% of the pixels are tissue"):
        resolve_stain("macenko", str(tmp_path / "white.png"), channels=3, dataset="pcam")


def test_cli_stain_reference(ref, tmp_path, capsys):
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(shifted_patch()).save(tmp_path / "other.png")
    out, prev = tmp_path / "stain.json", tmp_path / "preview.png"
    assert main(["data", "stain-reference", str(tmp_path / "ref.png"), "--method", "reinhard", "-o", str(out),
                 "--preview", str(prev), "--example", str(tmp_path / "other.png")]) == 0
    assert "transforms.stain_reference=" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["method"] == "reinhard" and doc["reference"]["file"] == "ref.png"
    assert doc["params"]["lab_mean"] == fit_stain(ref, "reinhard")["lab_mean"]
    assert Image.open(prev).size == (256, 256)  # two rows: reference, example; before | after
    params = load_stain_reference(out, "reinhard")
    assert params["lab_std"] == doc["params"]["lab_std"] and params["source"].startswith("ref.png sha256:")
    with pytest.raises(ConfigError, match=r"holds 'reinhard' parameters but transforms\.stain is 'macenko'"):
        load_stain_reference(out, "macenko")
    # never overwritten; bad method; no tissue: one line each, exit 2
    assert main(["data", "stain-reference", str(tmp_path / "ref.png"), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "stain-reference", str(tmp_path / "ref.png"), "--method", "macenco", "-o",
                 str(tmp_path / "b.json")]) == 2
    assert "Did you mean 'macenko'" in capsys.readouterr().err
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tmp_path / "white.png")
    assert main(["data", "stain-reference", str(tmp_path / "white.png"), "-o", str(tmp_path / "w.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: white.png: only 0.0% of the pixels are tissue") and not (tmp_path / "w.json").exists()


# ------------------------------------------------------------------------------------------------ end to end
PATTERN = "camelyonpatch_level_2_split_{split}_{xy}.h5"


def make_he_pcam(root, sizes=(("train", 32), ("valid", 32), ("test", 24))):
    """PCam-style files of synthetic H&E patches from two 'labs' (reference-like and shifted stains)."""
    root.mkdir(parents=True)
    images = {}
    for split, n in sizes:
        x = np.stack([he_patch(seed=1000 + i) if i % 3 else shifted_patch(seed=2000 + i) for i in range(n)])
        y = (np.arange(n) % 2).astype(np.uint8)
        x[y == 1, 40:56, 40:56] = (90, 30, 120)  # a dark 'tumour' blob in the centre 32x32 of positives
        with h5py.File(root / PATTERN.format(split=split, xy="x"), "w") as f:
            f.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(root / PATTERN.format(split=split, xy="y"), "w") as f:
            f.create_dataset("y", data=y.reshape(n, 1, 1, 1))
        images[split] = x
    return images


def test_stain_travels_from_training_to_bundle_and_serving(ref, tmp_path):
    from medcls import Predictor, evaluate, load_run, train
    from medcls.export import export_bundle

    images = make_he_pcam(tmp_path / "pcam")
    Image.fromarray(ref).save(tmp_path / "ref.png")
    assert main(["data", "stain-reference", str(tmp_path / "ref.png"), "-o", str(tmp_path / "stain.json")]) == 0
    cfg = {"name": "pcam", "seed": 0, "output_dir": str(tmp_path / "runs"),
           "data": {"source": f"hdf5:{tmp_path / 'pcam'}", "min_val_size": 1},
           "transforms": {"preset": "histology", "image_size": 32, "stain": "macenko",
                          "stain_reference": str(tmp_path / "stain.json")},
           "model": {"name": "test_resnet"},  # the preprocessing travels, whatever the network
           "train": {"epochs": 1, "batch_size": 16, "progress": False, "warmup_epochs": 0},
           "eval": {"batch_size": 32, "n_bootstrap": 0}}
    run = train(cfg)
    (tmp_path / "stain.json").unlink()  # the reference is not needed after training
    (tmp_path / "ref.png").unlink()
    stored = json.loads((run.path / "model.json").read_text())["preprocess"]
    assert stored["stain"] == "macenko" and len(stored["stain_params"]["stain_matrix"]) == 3
    assert stored["stain_params"]["source"].startswith("ref.png sha256:")

    evaluate(run, "test")
    df = pd.read_csv(run.path / "eval-test" / "predictions.csv")
    rows = [int(s.rsplit("[", 1)[1].rstrip("]")) for s in df["id"]]
    expected = df["prob_tumor"].to_numpy()
    test_images = [images["test"][r] for r in rows]

    from_run = Predictor.load(load_run(run.path).path)
    got = np.array([r["probabilities"]["tumor"] for r in from_run.predict(test_images)])
    np.testing.assert_allclose(got, expected, atol=1e-5)

    info = export_bundle(run, tmp_path / "bundle", onnx=False)
    assert info["model"]["preprocess"]["stain"] == "macenko"
    assert info["model"]["preprocess"]["stain_params"] == stored["stain_params"]
    served = Predictor.load(tmp_path / "bundle", backend="torch")
    assert served.preprocess.stain is not None
    png = []
    for im in test_images[:6]:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        png.append(buf.getvalue())
    got = np.array([r["probabilities"]["tumor"] for r in served.predict(test_images[:6] + png)])
    np.testing.assert_allclose(got, np.concatenate([expected[:6], expected[:6]]), atol=1e-5)
    # the step matters: without it the model gets different tensors (shifted-stain patches are rows % 3 == 0)
    plain = Preprocess(PreprocessConfig(size=32, in_chans=3))
    shifted = images["test"][0]
    assert not torch.allclose(served.preprocess(shifted), plain(shifted), atol=0.02)

    # resuming does not need the (deleted) reference: the run's parameters are reused
    resumed = train(resume=run.path, overrides=["train.epochs=2"])
    assert json.loads((resumed.path / "model.json").read_text())["preprocess"] == stored
