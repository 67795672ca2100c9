"""Two CPU processes with gloo under torchrun: ranks stay in sync and only rank 0 writes the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_torchrun_two_processes_stay_in_sync(tmp_path, pneumonia_npz):
    worker = Path(__file__).with_name("ddp_worker.py")
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path), str(pneumonia_npz), str(run_dir)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for epoch in (0, 1):
        a = json.loads((tmp_path / f"rank0-epoch{epoch}.json").read_text())
        b = json.loads((tmp_path / f"rank1-epoch{epoch}.json").read_text())
        assert a["world_size"] == b["world_size"] == 2
        assert a["checksum"] == b["checksum"]  # identical weights on both ranks
        assert a["val_auc"] == b["val_auc"]  # validation gathered from both shards
    env_json = json.loads((run_dir / "env.json").read_text())
    assert env_json["world_size"] == 2
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["run"]  # one run dir, written by rank 0
