"""A full disk, over-long names and unreadable files: one line, exit 2, and nothing half-written that a
later command could take as valid (issue 14: a run directory on a full disk gave a 54-line traceback)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import yaml

from medcls.cli.main import main


@pytest.fixture
def disk_of(monkeypatch):
    """Writes through ``medcls.utils`` fail with ENOSPC once ``budget`` bytes were written (os.fdopen is what
    the atomic writer opens its temporary file with)."""

    def limit(budget: int) -> None:
        real, written = os.fdopen, [0]

        class Full:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                written[0] += len(data)
                if written[0] > budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

        monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real(fd, mode, *a, **k)))

    return limit


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error:") or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err[-5:]
    return lines[0]


def test_training_on_a_full_disk(tiny_cfg, tmp_path, disk_of, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg))
    run_dir = tmp_path / "run"
    disk_of(200_000)  # the small files fit, the first checkpoint does not
    assert main(["train", "--config", str(cfg), "--run-dir", str(run_dir)]) == 2
    line = _one_error_line(capsys)
    assert "No space left on device" in line and ".safetensors" in line and "write elsewhere" in line
    assert not list(run_dir.rglob("*.tmp")) and not list((run_dir / "checkpoints").iterdir())
    assert main(["evaluate", str(run_dir)]) == 2  # the half-finished run is not taken as trained
    assert "no best checkpoint" in _one_error_line(capsys)


def test_exporting_to_a_full_disk_leaves_no_bundle(evaluated_run, tmp_path, disk_of, capsys):
    disk_of(100_000)
    out = tmp_path / "bundle"
    assert main(["export", str(evaluated_run.path), "-o", str(out)]) == 2
    assert "No space left on device" in _one_error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".bundle-*"))


def test_over_long_names(tiny_cfg, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg))
    assert main(["train", "--config", str(cfg), "--set", "name=" + "a" * 300]) == 2
    line = _one_error_line(capsys)
    assert "at most 200 characters" in line and len(line) < 300
    assert main(["train", "--config", str(cfg), "--set", f"output_dir={tmp_path / ('b' * 300)}"]) == 2
    line = _one_error_line(capsys)
    assert "File name too long" in line and "shorter name" in line
    assert main(["train", "--config", str(cfg), "--set", "data.source=folder:" + "c" * 5000]) == 2
    assert "at most 4096 characters" in _one_error_line(capsys)


def test_unreadable_files(evaluated_run, tmp_path, capsys):
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n")
    img.chmod(0)
    if os.access(img, os.R_OK):  # root reads anything: make the read fail another way
        img.chmod(0o644)
        img = tmp_path / "dir.png"
        img.mkdir()
    code = main(["predict", str(evaluated_run.path), str(img)])
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err and str(img.name) in err
    cfg = tmp_path / "cfg.yaml"
    cfg.mkdir()
    assert main(["train", "--config", str(cfg)]) == 2
    assert "cfg.yaml" in _one_error_line(capsys)


def test_os_error_lines_name_the_file_and_the_remedy():
    from medcls.cli.main import _os_error_line

    assert _os_error_line(OSError(errno.ENOSPC, "No space left on device", "/r/x")) == \
        "No space left on device: /r/x; free some space, or write elsewhere with --set output_dir=... or -o"
    assert _os_error_line(OSError(errno.EIO, "Input/output error")) == "Input/output error"
    assert Path("/r/x").name in _os_error_line(OSError(errno.EROFS, "Read-only file system", "/r/x"))
