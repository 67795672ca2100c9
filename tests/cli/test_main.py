"""The command line, end to end on a small real subset, and every bad input it must explain."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcls.cli.main import main

COMMANDS = ["train", "calibrate", "evaluate", "predict", "explain", "export", "serve", "compare", "models", "datasets",
            "cv", "tune", "ablate", "data", "config"]


def test_train_prints_summary_and_run_dir(trained):
    run_dir, r = trained
    assert "auc" in r.stdout and "sensitivity" in r.stdout and "specificity" in r.stdout
    assert f"run written to {run_dir}" in r.stdout
    assert "epoch 2/2" in r.stderr
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= summary["eval"]["test"]["auc"] <= 1


def test_evaluate_writes_metrics_predictions_and_curves(trained, capsys):
    run_dir, _ = trained
    assert main(["evaluate", str(run_dir), "--split", "val"]) == 0, capsys.readouterr().err
    out = run_dir / "eval-val"
    for f in ("metrics.json", "predictions.csv", "roc.png", "pr.png", "confusion.png", "history.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    m = json.loads((out / "metrics.json").read_text())
    df = pd.read_csv(out / "predictions.csv")
    assert len(df) == m["n"] == 128
    assert np.allclose(df["prob_normal"] + df["prob_pneumonia"], 1, atol=1e-5)
    assert m["accuracy"] == pytest.approx(df["correct"].mean())


def test_predict_matches_evaluation(trained, pneumonia_arrays, tmp_path, capsys):
    """`medcls train` evaluated the test split: predicting its images from files gives the same probabilities."""
    run_dir, _ = trained
    df = pd.read_csv(run_dir / "eval-test" / "predictions.csv")
    # write the first 3 evaluated test images to PNG/JPEG and predict them from files
    idx = [int(s.split("/")[1]) for s in df["id"][:3]]
    files = []
    for k, i in enumerate(idx):
        p = tmp_path / f"img{k}.png"
        Image.fromarray(pneumonia_arrays["test_images"][i]).save(p)
        files.append(p)
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir), *map(str, files), "--csv", str(out_csv)]) == 0
    pred = pd.read_csv(out_csv)
    assert np.allclose(pred["prob_pneumonia"].to_numpy(), df["prob_pneumonia"][:3].to_numpy(), atol=1e-5)
    assert "predicted" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_on_every_command(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_models_and_datasets(capsys):
    assert main(["models", "resnet1*"]) == 0
    assert "resnet18" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "pneumoniamnist" in out and "folder" in out and "hdf5" in out
    assert main(["models", "zzz*"]) == 2


def run_main(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_bad_inputs_give_one_clear_line(capsys, tmp_path, trained, pneumonia_npz):
    run_dir, _ = trained
    cases = [
        (["train", "--config", str(tmp_path / "missing.yaml")], "Config file not found"),
        (["train", "--set", "model.name=resnet81", "--set", f"data.options.path={pneumonia_npz}"], "Did you mean 'resnet18'"),
        (["train", "--set", "train.lr=-3"], "train.lr: Input should be greater than 0"),
        (["train", "--set", "train.epoch=3"], "Did you mean 'train.epochs'"),
        (["train", "--set", f"data.options.path={pneumonia_npz}", "--run-dir", str(run_dir)], "already exists"),
        (["train", "--set", "data.source=folder:" + str(tmp_path / "nowhere")], "does not exist"),
        (["evaluate", str(tmp_path)], "not a medcls run directory"),
        (["evaluate", str(tmp_path / "nope")], "run directory not found"),
        (["evaluate", str(run_dir), "--split", "tset"], "split must be one of"),
        (["predict", str(run_dir), str(tmp_path / "missing.png")], "image not found"),
    ]
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    cases.append((["predict", str(run_dir), str(text)], "cannot decode image"))
    for args, expect in cases:
        code, err = run_main(args, capsys)
        assert code == 2, (args, err)
        assert expect in err, (args, err)
        assert "Traceback" not in err
    # nothing already on disk was lost
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()


def test_compare_runs(trained, capsys, tmp_path):
    run_dir, _ = trained
    code = main(["compare", str(run_dir), str(run_dir), "--split", "test", "--n-resamples", "300"])
    out = capsys.readouterr().out
    assert code == 0 and "auc" in out and "DeLong" in out
    res = json.loads((run_dir / "compare-test.json").read_text())
    assert res["auc"]["diff"] == 0 and res["auc"]["p_value"] == 1.0 and res["n"] == 128
    other = shutil.copytree(run_dir, tmp_path / "other")  # evaluated on other cases: half of them
    preds = other / "eval-test" / "predictions.csv"
    df = pd.read_csv(preds)
    df.iloc[: len(df) // 2].to_csv(preds, index=False)
    code = main(["compare", str(run_dir), str(other)])
    assert code == 2 and "different cases" in capsys.readouterr().err
