"""The CLI contract: every usage error is one line on stderr, starting with `error:`, and exit status 2."""

from __future__ import annotations

import importlib.util

import pytest

from medcls import __version__
from medcls.cli.main import main

from .conftest import medcls


@pytest.mark.parametrize("args,expect", [
    (["train", "--epochs", "5"], "set config values with --set train.epochs=5"),
    (["train", "--lr=0.01"], "--set train.lr=0.01"),
    (["train", "--batch-size", "64"], "--set train.batch_size=64"),
    (["train", "--model", "resnet50"], "--set model.name=resnet50"),
    (["train", "--warmup-epochs", "2"], "--set train.warmup_epochs=2"),
    (["train", "--frobnicate"], "no such option --frobnicate for `medcls train`"),
    (["trian"], "no such command 'trian' for `medcls`. Did you mean 'train'?"),
    (["data", "chek"], "Did you mean 'check'?"),
    (["evaluate"], "missing argument RUN_DIR"),
    (["predict"], "missing argument SOURCE"),
    (["export", "runs/x"], "missing option --output"),
    (["evaluate", "runs/x", "--split"], "requires an argument"),
    (["serve", "bundle", "--max-batch", "0"], "--max-batch: input should be greater than or equal to 1 (got 0)"),
    (["serve", "bundle", "--timeout-headers", "0"], "--timeout-headers: input should be greater than 0 (got 0.0)"),
    (["evaluate", "/nonexistent/run"], "run directory not found: /nonexistent/run"),
    (["train", "--set", "data.cache=maybe"], "data.cache: Input should be 'auto', 'memory', 'disk', 'off' or 'on' (got 'maybe')"),
    (["train", "--set", "train.epoch=3"], "Did you mean 'train.epochs'"),
    (["config", "show", "--no-data", "--set", "train.epochs=abc"], "train.epochs"),
    (["train", "--set", "epochs"], "--set expects KEY=VALUE"),
])
def test_usage_errors_are_one_line_and_exit_2(args, expect, capsys):
    if args[0] == "serve" and importlib.util.find_spec("fastapi") is None:
        expect = "needs the 'serve' extra"  # a core install names the missing extra first, in one line too
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0], lines[0]


def test_the_installed_command_says_it_the_same_way(tmp_path):
    """Through the real entry point (a subprocess): no traceback, one line, status 2."""
    r = medcls("train", "--epochs", "5", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"medcls {__version__}"


def test_a_bare_group_prints_its_help(capsys):
    assert main(["data"]) == 0
    assert "check" in capsys.readouterr().out
