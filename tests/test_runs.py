"""Run directories stand alone (relative paths made absolute, copied elsewhere they evaluate and resume)
and everything written follows the umask."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
import yaml

from medcls import evaluate, train
from medcls.cli import main


@pytest.fixture
def project(tmp_path, pneumonia_npz, monkeypatch):
    """A project folder as a user has it: ./data/pneumoniamnist.npz and a relative splits.csv."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "pneumoniamnist.npz").symlink_to(pneumonia_npz)
    monkeypatch.chdir(proj)
    monkeypatch.delenv("MEDCLS_DATA_DIR", raising=False)
    assert main(["data", "split", "medmnist:pneumoniamnist", "--by", "none", "-o", "splits.csv"]) == 0
    return proj


def _cfg(**train_kw) -> dict:
    return {"name": "rel", "output_dir": "runs",
            "data": {"source": "medmnist:pneumoniamnist", "splits_file": "splits.csv", "limit": 64},
            "model": {"name": "test_resnet"},  # what is checked is the files, not the network: the smallest one
            "train": {"epochs": 1, "batch_size": 32, "progress": False, **train_kw},
            "eval": {"n_bootstrap": 0}}


def test_a_copied_run_directory_evaluates_and_resumes_from_anywhere(project, tmp_path, monkeypatch):
    run = train(_cfg())
    saved = yaml.safe_load((run.path / "config.yaml").read_text())["data"]
    assert os.path.isabs(saved["splits_file"]) and os.path.isabs(saved["data_dir"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = shutil.copytree(run.path, elsewhere / "copied-run")
    monkeypatch.chdir(elsewhere)  # no ./data, no ./splits.csv here
    m = evaluate(copy, "test")
    assert m["n"] == 64 and 0 <= m["auc"] <= 1
    resumed = train(resume=copy, overrides=["train.epochs=2"])
    assert resumed.path == copy and resumed.metrics()["train"]["epochs_run"] == 2


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_follow_the_umask(project, umask, file_mode, dir_mode):
    from medcls.export import export_bundle

    old = os.umask(umask)
    try:
        run = train(_cfg())
        evaluate(run, "test")
        export_bundle(run, project / "bundle", quantize="int8", max_int8_auc_drop=1.0, n_calibration=16)
    finally:
        os.umask(old)
    for root in (run.path, project / "bundle"):
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (dir_mode if p.is_dir() else file_mode), (p, oct(mode))
