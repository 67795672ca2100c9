"""The core install without any extra: trains and predicts; a feature that needs an extra says which, in one line.

Each case runs in a subprocess whose import system refuses every module an extra provides, as a core-only
``pip install medcls`` would (the real core-only venv check is in the README's development section).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from medcls.extras import EXTRA_OF, MissingExtraError, require

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in BLOCKED or name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Block())
""")


def run_core(code: str, *, timeout: int = 300) -> subprocess.CompletedProcess:
    blocked = sorted({m.split(".")[0] for m in EXTRA_OF} - {"torch"})
    script = BLOCKER.format(blocked=blocked) + textwrap.dedent(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)


def cli(args: list[str]) -> str:
    return f"import sys\nfrom medcls.cli.main import main\nsys.exit(main({args!r}))\n"


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_require_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"medcls tune needs the 'tune' extra .*pip install 'medcls\[tune\]'"):
        _missing("optuna", "medcls tune")


def _missing(module: str, feature: str):
    real = sys.modules.get(module)
    sys.modules[module] = None  # an import of a None entry raises ImportError
    try:
        require(module, feature)
    finally:
        if real is None:
            del sys.modules[module]
        else:
            sys.modules[module] = real


def test_core_trains_and_predicts_without_any_extra(tmp_path, pneumonia_npz):
    cfg = {"name": "core", "seed": 0, "output_dir": str(tmp_path),
           "data": {"source": "medmnist:pneumoniamnist", "options": {"path": str(pneumonia_npz)}, "limit": 48},
           "model": {"name": "resnet18", "stem": "tiny"}, "train": {"epochs": 1, "batch_size": 16, "progress": False}}
    r = run_core(f"""
        import json, numpy as np
        import medcls
        run = medcls.train({cfg!r})
        out = medcls.predict(run, [np.zeros((28, 28), np.uint8)])
        print(json.dumps({{"label": out[0]["predicted"]}}))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["label"] in ("normal", "pneumonia")  # an import of any extra's module would have raised


@pytest.mark.parametrize("args, extra", [
    (["serve", "{tmp}"], "serve"),
    (["tune", "--config", "configs/pneumoniamnist.yaml", "--trials", "1"], "tune"),
])
def test_cli_feature_without_its_extra_is_one_line_and_exit_2(tmp_path, args, extra):
    args = [a.format(tmp=tmp_path) for a in args]
    r = run_core(cli(args))
    assert r.returncode == 2, r.stderr[-2000:]
    line = one_line(r)
    assert f"pip install 'medcls[{extra}]'" in line and "Traceback" not in r.stderr


def test_library_imports_without_their_extra_name_it():
    r = run_core("""
        from medcls.extras import MissingExtraError
        for what in ("serve", "pruning", "text"):
            try:
                if what == "serve":
                    import medcls.serve
                elif what == "pruning":
                    from medcls.models.pruning import torch_pruning; torch_pruning()
                else:
                    from medcls.multimodal.text import load_tokenizer; load_tokenizer("bert-base-uncased")
            except MissingExtraError as e:
                print(str(e))
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, extra in zip(lines, ("serve", "prune", "text"), strict=True):
        assert f"pip install 'medcls[{extra}]'" in line
