"""`medcls drift` on a real bundle: PneumoniaMNIST images under an acquisition shift are reported as drifted,
an unshifted sample of the same size is not (a change of prevalence alone is reported apart)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcls.errors import ConfigError, RunError
from medcls.inference.drift import check_drift
from medcls.testing.shifts import KINDS, shift

N = 240


def write(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def held_out(evaluated_run, pneumonia_arrays):
    """Validation images of PneumoniaMNIST that the bundle's reference does not hold (the fixture's run uses 128
    of them): the reference's own distribution, other images (benchmarks/drift.py measures the false alarm
    rate over repeated samples, and on the test split)."""
    from medcls.data.sources import load_data

    used = {int(i.split("/")[1]) for i in load_data(evaluated_run.config.data).val.ids}
    images = pneumonia_arrays["val_images"]
    return images[[i for i in range(len(images)) if i not in used]][:N]


@pytest.fixture(scope="module")
def folders(held_out, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    out = {"none": write(root / "none", held_out)}
    for kind in KINDS:
        out[kind] = write(root / kind, shift(held_out, kind, severity=1.5))
    return out


def test_unshifted_test_images_have_not_drifted(bundle, folders):
    r = check_drift(bundle[0], [folders["none"]])
    assert r["used"] == N and not r["drifted"], r["tests"]
    assert [t["test"] for t in r["tests"]] == ["ood_score", "features", "flagged", "prediction mix"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_acquisition_shift_is_drift(bundle, folders, kind):
    r = check_drift(bundle[0], [folders[kind]])
    assert r["drifted"], (kind, r["tests"])


def test_the_cli_prints_the_table_writes_json_and_fails_on_drift_when_asked(bundle, folders, tmp_path):
    cmd = [sys.executable, "-m", "medcls", "drift", str(bundle[0])]
    calm = subprocess.run([*cmd, str(folders["none"]), "--json", str(tmp_path / "d.json")], capture_output=True,
                          text=True, timeout=300)
    assert calm.returncode == 0 and "have not drifted" in calm.stdout and "prediction mix" in calm.stdout
    assert json.loads((tmp_path / "d.json").read_text())["drifted"] is False
    loud = subprocess.run([*cmd, str(folders["gamma"]), "--fail-on-drift"], capture_output=True, text=True,
                          timeout=300)
    assert loud.returncode == 1 and "HAVE DRIFTED" in loud.stdout


def test_bad_requests_are_one_line(bundle, evaluated_run, folders, tmp_path):
    with pytest.raises(RunError, match="no drift reference"):
        check_drift(evaluated_run.path, [folders["none"]])
    with pytest.raises(ConfigError, match="--alpha"):
        check_drift(bundle[0], [folders["none"]], alpha=2)
    few = write(tmp_path / "few", np.zeros((5, 28, 28), np.uint8))
    r = subprocess.run([sys.executable, "-m", "medcls", "drift", str(bundle[0]), str(few)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "at least 20 readable images" in r.stderr and "Traceback" not in r.stderr
