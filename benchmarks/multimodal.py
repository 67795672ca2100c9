"""Multimodal ablation (issue 5): image only vs metadata only vs concat / cross-attention / gated fusion.

Two benchmarks, each one ``medcls.experiments.ablate`` (same splits and seed for every variant):

1. ``synthetic``: the joint-dependence benchmark of ``medcls.testing.multimodal`` (label = planted image
   feature XNOR a metadata flag; image-only ceiling AUC = q, metadata-only 0.5, joint 1.0);
2. ``btxrd``: a BTXRD-style fixture (dataset.xlsx with age, gender, site, view; PneumoniaMNIST images as
   radiographs), or the real BTXRD folder with ``--btxrd /data/BTXRD``.

Writes the markdown tables (paste them into benchmarks/RESULTS.md) and a JSON file.

    python benchmarks/multimodal.py --out /tmp/mm-bench --json multimodal.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path

import torch
from _common import cpu_name

from medcls.experiments.ablate import ablate, to_markdown
from medcls.testing.multimodal import image_only_ceiling, joint_config, make_joint_dataset, write_btxrd_like

ROOT = Path(__file__).resolve().parents[1]


def synthetic(out: Path, *, n_train: int, epochs: int, model: str, q: float, seed: int) -> dict:
    manifest = make_joint_dataset(out / "synthetic-data", n_train=n_train, n_val=n_train // 4, n_test=n_train // 2,
                                  q=q, seed=seed)
    cfg = joint_config(manifest, out / "runs", epochs=epochs, model=model, name="synthetic")
    cfg["seed"] = seed
    t0 = time.perf_counter()
    res = ablate(cfg)
    title = (f"synthetic joint benchmark: {model}, {n_train} train images (32 px), {epochs} epochs, q = {q} "
             f"(image-only ceiling AUC {image_only_ceiling(q):.2f}, metadata-only 0.5, joint 1.0)")
    return {"title": title, "markdown": to_markdown(res.table, title), "rows": res.table.to_dict("records"),
            "seconds": time.perf_counter() - t0, "path": str(res.path)}


def btxrd(out: Path, *, folder: str | None, n: int, epochs: int, model: str, seed: int) -> dict:
    import numpy as np

    fixture = folder is None
    if fixture:
        with np.load(ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz") as z:
            images = z["train_images"]
        xlsx, _ = write_btxrd_like(out / "BTXRD", images, n=n)
        folder = str(xlsx.parent)
    cfg = {"name": "btxrd", "seed": seed, "output_dir": str(out / "runs"),
           "data": {"source": f"btxrd:{folder}", "min_val_size": 16},
           "transforms": {"image_size": 28 if fixture else 224, "strength": 0.5},
           "inputs": {"numeric": ["age"], "categorical": ["gender", "site", "view"]},
           "model": {"name": model, "fusion_dim": 32},
           "train": {"epochs": epochs, "batch_size": 32, "progress": False}}
    t0 = time.perf_counter()
    res = ablate(cfg)
    title = f"BTXRD-style ({folder}): {model}, {epochs} epochs"
    return {"title": title, "markdown": to_markdown(res.table, title), "rows": res.table.to_dict("records"),
            "seconds": time.perf_counter() - t0, "path": str(res.path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Work folder (datasets, runs).")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--q", type=float, default=0.75)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--btxrd", default=None, help="Real BTXRD folder (default: a fixture of --btxrd-n images).")
    ap.add_argument("--btxrd-n", type=int, default=600)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_name(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "synthetic": synthetic(args.out, n_train=args.n_train, epochs=args.epochs, model=args.model, q=args.q,
                                      seed=args.seed),
               "btxrd": btxrd(args.out, folder=args.btxrd, n=args.btxrd_n, epochs=args.epochs, model=args.model,
                              seed=args.seed)}
    for k in ("synthetic", "btxrd"):
        print(f"\n### {results[k]['title']}\n\n{results[k]['markdown']}\n({results[k]['seconds']:.0f} s)")
    print(f"\n{results['cpu']}, {results['threads']} threads, torch {results['torch']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
