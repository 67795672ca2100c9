"""Out-of-distribution gate of a bundle (issue 18): AUROC against images of other kinds, share of test flagged.

The bundle's gate (Mahalanobis distance of penultimate features, threshold at 95% validation acceptance,
fitted by ``medcls export``) scores the run's own test split (in distribution) and ``--n`` images of each
kind that :mod:`medcls.testing.ood_images` renders (text pages, colour photos, natural textures,
histology-like patches, ultrasound-like sectors, fundus-like discs). For each kind: AUROC of the score
(in-distribution test vs that kind) and the share flagged; for the test split: the share flagged (the
gate's false alarms). The same is reported for the maximum softmax probability (1 - MSP as the score), the
baseline a gate must beat. Both backends of the bundle are used (torch and ONNX Runtime fp32).

    medcls export RUN -o BUNDLE
    python benchmarks/ood.py --run RUN --bundle BUNDLE --md ood.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medcls.artefact import open_artefact
from medcls.data.sources import load_data
from medcls.inference import Predictor
from medcls.runs import load_run
from medcls.testing.ood_images import KINDS, render


def scores(pred: Predictor, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Gate scores and 1 - max softmax probability of ``images``."""
    out_s, out_m = [], []
    for lo in range(0, len(images), 128):
        x = torch.stack([pred.preprocess(im) for im in images[lo : lo + 128]])
        p, s = pred.probabilities_and_ood(x)
        out_s.append(s)
        out_m.append(1 - p.max(axis=1))
    return np.concatenate(out_s), np.concatenate(out_m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="the run the bundle was exported from (its test split)")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200, help="images per out-of-distribution kind")
    ap.add_argument("--size", type=int, default=256, help="side of the rendered images (resized by the bundle)")
    ap.add_argument("--backend", default="onnx", choices=["torch", "onnx"])
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    pred = Predictor.load(args.bundle, backend=args.backend)
    if pred.ood is None:
        raise SystemExit(f"{args.bundle} has no out-of-distribution gate: export it again with this medcls")
    art = open_artefact(args.bundle)
    run_cfg = art.info["source"]["run"]
    test = load_data(load_run(args.run).config.data).test
    id_images = [test.load(i) for i in range(len(test))]
    s_id, m_id = scores(pred, id_images)
    thr = pred.ood.threshold
    rows = [("in-distribution test (" + f"{len(test)} images)", "—", "—", f"{np.mean(s_id > thr):.1%}")]
    for k, kind in enumerate(KINDS):
        s_ood, m_ood = scores(pred, render(kind, args.n, size=args.size, seed=k))
        y = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))]
        rows.append((kind, f"{roc_auc_score(y, np.r_[s_id, s_ood]):.4f}", f"{roc_auc_score(y, np.r_[m_id, m_ood]):.4f}",
                     f"{np.mean(s_ood > thr):.1%}"))
    lines = [f"### Out-of-distribution gate: {art.spec.architecture}, bundle of run {run_cfg}, backend {args.backend}",
             "", f"Threshold {thr:.2f} (accepts {pred.ood.accept:.0%} of validation); {args.n} images per kind, "
             f"rendered at {args.size} px.", "",
             "| images | AUROC gate (Mahalanobis) | AUROC 1 − max softmax | flagged by the gate |",
             "|---|---:|---:|---:|", *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.md:
        args.md.write_text(md)


if __name__ == "__main__":
    main()
