"""Run by tests/engine/test_ddp.py under torchrun: trains and records each rank's weights per epoch.

argv: out_dir npz run_dir [cache_dir]: with a cache_dir the splits are cached on disk there, and each
rank also records whether it built the caches.
"""

import json
import os
import sys

from medcls import train
from medcls.engine.distributed import params_checksum

out_dir, npz, run_dir = sys.argv[1], sys.argv[2], sys.argv[3]
cache_dir = sys.argv[4] if len(sys.argv) > 4 else None
rank = int(os.environ["RANK"])


def record(trainer, epoch, row):
    built = {k: getattr(b.cache, "built", None) for k, b in (("train", trainer.train_batches), ("val", trainer.val_batches))}
    with open(os.path.join(out_dir, f"rank{rank}-epoch{epoch}.json"), "w") as f:
        json.dump({"checksum": params_checksum(trainer.model), "world_size": trainer.dist.world_size,
                   "train_loss": row["train_loss"], "val_auc": row.get("val_auc"), "built": built}, f)


cfg = {
    "name": "ddp", "seed": 0, "output_dir": out_dir,
    "data": {"source": "medmnist:pneumoniamnist", "options": {"path": npz}, "limit": 64},
    "model": {"name": "resnet18", "stem": "default"},
    "train": {"epochs": 2, "batch_size": 16, "progress": False, "threads": 1},
}
if cache_dir:
    cfg["data"].update({"cache": "disk", "cache_dir": cache_dir})
train(cfg, run_dir=run_dir, callbacks=[record])
