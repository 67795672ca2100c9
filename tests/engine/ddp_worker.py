"""Run by tests/engine/test_ddp.py under torchrun: trains and records each rank's weights per epoch."""

import json
import os
import sys

from medcls import train
from medcls.engine.distributed import params_checksum

out_dir, npz, run_dir = sys.argv[1], sys.argv[2], sys.argv[3]
rank = int(os.environ["RANK"])


def record(trainer, epoch, row):
    with open(os.path.join(out_dir, f"rank{rank}-epoch{epoch}.json"), "w") as f:
        json.dump({"checksum": params_checksum(trainer.model), "world_size": trainer.dist.world_size,
                   "train_loss": row["train_loss"], "val_auc": row.get("val_auc")}, f)


cfg = {
    "name": "ddp", "seed": 0, "output_dir": out_dir,
    "data": {"source": "medmnist:pneumoniamnist", "options": {"path": npz}, "limit": 64},
    "model": {"name": "resnet18", "stem": "default"},
    "train": {"epochs": 2, "batch_size": 16, "progress": False, "threads": 1},
}
train(cfg, run_dir=run_dir, callbacks=[record])
