"""The package layers (pyproject.toml [tool.importlinter]) hold: no import runs upwards, so no cycle between
packages and no library code importing the CLI, the server or the experiments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    r = _lint(ROOT / "pyproject.toml")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package where metrics imports the CLI is refused."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "medcls", src / "medcls", ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "medcls" / "metrics" / "__init__.py", "a") as f:
        f.write("\nfrom ..cli import main as _upward  # noqa\n")
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text((ROOT / "pyproject.toml").read_text())
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(cfg)!r}, no_cache=True, no_logo=True))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "medcls.metrics" in r.stdout and "medcls.cli" in r.stdout
