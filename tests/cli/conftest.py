"""Shared CLI fixtures: `medcls` as a subprocess, and one small run trained through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def medcls(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", "medcls", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, pneumonia_npz):
    """`medcls train` on 128 real images per split, 2 epochs, through the installed entry point (a subprocess),
    once for every CLI test (they add evaluations, predictions and calibrations beside it, never remove files)."""
    root = tmp_path_factory.mktemp("cli")
    run_dir = root / "run"
    r = medcls("train", "--config", str(Path("configs/pneumoniamnist.yaml").resolve()),
               "--set", "train.epochs=2", "--set", "model.name=resnet18", "--set", "model.stem=default",
               "--set", f"data.options.path={pneumonia_npz}", "--set", "data.limit=128",
               "--set", "train.progress=false", "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr
    return run_dir, r


