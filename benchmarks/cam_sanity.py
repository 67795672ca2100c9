"""Grad-CAM sanity on a trained run: do maps differ between images, and do they depend on the weights?

For the first ``--n`` test images of the run's data, at the layer medcls chooses and at each
``--layers`` given: the map's grid, the mean pairwise Pearson correlation between the maps of
different images (near 1: the same blob on every image), and the mean Spearman rank correlation of
each map with the map of a copy of the model whose weights are re-initialised (Adebayo et al., 2018;
near 1: the map does not depend on what the model learned).

    python benchmarks/cam_sanity.py --run runs/pneumoniamnist-... --layers net.layer4.1 net.layer3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import warnings
from pathlib import Path

import torch
from _common import cpu_name

from medcls.data.sources import load_data
from medcls.explain import cam_sanity
from medcls.runs import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--split", default="test")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--layers", nargs="*", default=[], help="Also these layers, for comparison.")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    run = load_run(args.run)
    model, pre, _ = run.artefact.load("best")
    table = load_data(run.config.data).split(args.split)
    x = torch.stack([pre(table.load(i)) for i in range(min(args.n, len(table)))])
    rows = []
    for layer in [None, *args.layers]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # coarse layers asked for on purpose
            s = cam_sanity(model, x, method=args.method, layer=layer)
        rows.append({**s, "chosen_by": "medcls (default)" if layer is None else "asked"})
    print(f"### Grad-CAM sanity: {run.path.name}, {len(x)} {args.split} images, {args.method} "
          f"({dt.date.today().isoformat()}; {cpu_name()})\n")
    print("| layer | chosen by | map | mean pairwise correlation | randomisation rank correlation |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        grid = "x".join(map(str, r["map_size"])) if r["map_size"] else "?"
        print(f"| {r['layer']} | {r['chosen_by']} | {grid} | {r['pairwise_correlation']:.3f} | "
              f"{r['randomisation_correlation']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
