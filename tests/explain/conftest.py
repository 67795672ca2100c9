"""Shared by the explanation tests: one intra-op thread, a tiny trained run, the log handlers restored."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch


@contextlib.contextmanager
def one_thread():
    """One intra-op thread: much faster than two on a machine shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def tiny_run(tiny_cfg):
    from medcls import train

    tiny_cfg["eval"]["n_bootstrap"] = 0
    with one_thread():
        yield train(tiny_cfg)


@pytest.fixture
def restore_logging():
    """main() binds a log handler to the (captured) stderr of this test: undo it afterwards."""
    log = logging.getLogger("medcls")
    saved = log.handlers[:], log.level, log.propagate
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]
