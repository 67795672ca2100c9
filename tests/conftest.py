"""Shared fixtures: the real PneumoniaMNIST file, tiny configs, offline hub."""

from __future__ import annotations

import importlib
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each, or the
    os.environ["OMP_NUM_THREADS"] = "1"     # workers' thread pools fight over the cores (several times slower)
    os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["MEDCLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="medcls-test-cache-")  # never the user's ~/.cache

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT / "data" / "pneumoniamnist.npz", ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"]


def pytest_sessionstart(session):
    """Tests of optional features skip when their extra is missing (``pytest.importorskip``), so a core-only
    install passes the core tests; with MEDCLS_REQUIRE_ALL=1 (``make test``, CI) a missing extra fails the
    session instead, so a broken install cannot pass as skipped tests; so does missing PneumoniaMNIST data (the
    tests that train would otherwise all skip: 353 of them, and the run would still end green)."""
    if os.environ.get("MEDCLS_REQUIRE_ALL") != "1":
        return
    from medcls.extras import EXTRA_OF

    missing = []
    for module, extra in EXTRA_OF.items():
        if extra == "bench":  # benchmarks only, not in medcls[all]
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(f"{module} ('{extra}' extra)")
    if missing:
        pytest.exit("MEDCLS_REQUIRE_ALL=1 but not installed: " + ", ".join(missing), returncode=3)
    if find_pneumonia() is None:
        pytest.exit("MEDCLS_REQUIRE_ALL=1 but pneumoniamnist.npz is not on this machine: `make data` links it from "
                    "SHARED (make test SHARED=DIR) or downloads it; or set MEDCLS_DATA_DIR", returncode=3)


# Fixtures that train or evaluate a model (directly or through another fixture): a module that uses them is slow.
TRAINING_FIXTURES = {"make_cfg", "tiny_cfg", "evaluated_run", "bundle", "trained", "pneumonia_npz"}


def pytest_collection_modifyitems(config, items):
    """With one xdist worker per core (``make test``), modules go to whichever worker is free in collection order:
    put the modules with the most training tests first, so the run does not end with one worker alone on a slow
    module while the other idles. The order within a module, and of modules that train alike, is unchanged."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    weight = Counter(item.path for item in items if TRAINING_FIXTURES & set(item.fixturenames))
    items.sort(key=lambda item: -weight[item.path])


def find_pneumonia() -> Path | None:
    env = os.environ.get("MEDCLS_DATA_DIR")
    cands = ([Path(env) / "pneumoniamnist.npz"] if env else []) + CANDIDATES
    return next((p.resolve() for p in cands if p.is_file()), None)


@pytest.fixture(scope="session")
def pneumonia_npz() -> Path:
    p = find_pneumonia()
    if p is None:
        pytest.skip("pneumoniamnist.npz not found (run `make data` or set MEDCLS_DATA_DIR)")
    return p


@pytest.fixture(scope="session")
def pneumonia_arrays(pneumonia_npz) -> dict[str, np.ndarray]:
    with np.load(pneumonia_npz) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def make_cfg(pneumonia_npz):
    """Build a small training config on real PneumoniaMNIST: ResNet-18, 2 epochs, batch 32.

    ``train`` and ``eval`` entries are added to (train) or replace (eval) the defaults.
    """

    def make(output_dir, *, name: str = "tiny", limit: int = 96, stem: str = "default",
             train: dict | None = None, eval: dict | None = None) -> dict:
        return {
            "name": name, "seed": 0, "output_dir": str(output_dir),
            "data": {"source": "medmnist:pneumoniamnist", "options": {"path": str(pneumonia_npz)}, "limit": limit},
            "model": {"name": "resnet18", "stem": stem},
            "train": {"epochs": 2, "batch_size": 32, "progress": False, **(train or {})},
            "eval": dict(eval or {}),
        }

    return make


@pytest.fixture
def tiny_cfg(make_cfg, tmp_path) -> dict:
    """A config that trains ResNet-18 on 96 real PneumoniaMNIST images per split in seconds."""
    return make_cfg(tmp_path / "runs", train={"warmup_epochs": 0.5}, eval={"batch_size": 64})


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory, make_cfg):
    """A 2-epoch run on 128 real images per split, evaluated on test (calibration + youden operating point)."""
    from medcls import evaluate, train

    cfg = make_cfg(tmp_path_factory.mktemp("evaluated"), name="b", limit=128, stem="small",
                   eval={"n_bootstrap": 200, "operating_point": "youden"})
    run = train(cfg)
    evaluate(run, "test")
    return run


@pytest.fixture(scope="session")
def bundle(evaluated_run, tmp_path_factory):
    """The evaluated run exported with ONNX, static INT8 and TorchScript."""
    from medcls.export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    info = export_bundle(evaluated_run, out, quantize="int8", torchscript=True, max_int8_auc_drop=1.0, n_calibration=64)
    return out, info
