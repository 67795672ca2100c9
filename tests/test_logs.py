"""The Python API shows its progress (epoch lines) in a notebook, unless the application configured logging."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_api_installs_a_console_handler_when_nobody_did():
    r = _run("import logging; from medcls.logs import ensure_console_logging; ensure_console_logging(); "
             "logging.getLogger('medcls.engine').info('epoch 1/3  loss 0.5')")
    assert r.returncode == 0 and "epoch 1/3  loss 0.5" in r.stderr


def test_an_application_logging_setup_is_kept():
    r = _run("import logging; logging.basicConfig(level=logging.WARNING, format='APP %(message)s'); "
             "from medcls.logs import ensure_console_logging; ensure_console_logging(); "
             "logging.getLogger('medcls.engine').info('hidden'); logging.getLogger('medcls').warning('shown'); "
             "print(len(logging.getLogger('medcls').handlers))")
    assert "hidden" not in r.stderr and "APP shown" in r.stderr and r.stdout.strip() == "0"


def test_train_prints_epoch_lines_without_any_setup(pneumonia_npz, tmp_path):
    code = (f"import medcls; medcls.train({{'output_dir': {str(tmp_path)!r}, "
            f"'data': {{'options': {{'path': {str(pneumonia_npz)!r}}}, 'limit': 32}}, "
            "'train': {'epochs': 1, 'batch_size': 16, 'progress': False}, 'eval': {'n_bootstrap': 0}})")
    r = _run(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epoch 1/1" in r.stderr and "calibrated best" in r.stderr


def test_progress_lines_are_rate_limited_and_end_with_the_time_taken(caplog):
    import logging

    from medcls.logs import Progress

    now = [0.0]
    with caplog.at_level(logging.INFO, logger="medcls"):
        p = Progress("features of train images", 5000, every=5, clock=lambda: now[0])
        for _ in range(10):
            now[0] += 1.0
            p.update(500)
        p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "features of train images (5,000) ..."
    assert lines[1:-1] == ["features of train images: 2,500/5,000 (50%), 5 s, about 5 s left"]
    assert lines[-1] == "features of train images: done in 10.0 s"
