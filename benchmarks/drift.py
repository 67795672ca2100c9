"""Drift detection of a bundle (issue 26): detection rate under acquisition shifts, false alarm rate without.

The bundle's reference (its validation split, stored by ``medcls export``) is tested, as ``medcls drift`` does,
against ``--repeats`` samples of ``--n`` images of the run's test split: unshifted (every alarm is a false
one: the false alarm rate) and under each acquisition shift of :mod:`medcls.testing.shifts` (gamma, contrast,
noise, blur) at several severities (the detection rate). Features are computed once per image and shift;
each repeat draws its sample of images anew. The test split's prevalence differs from validation's in
PneumoniaMNIST (62% vs 74% pneumonia): the prediction mix changes on every sample, which is reported apart
and is not drift of the inputs.

    python benchmarks/drift.py --work /tmp/drift                 # trains the default recipe (3 epochs), exports
    python benchmarks/drift.py --bundle BUNDLE --run RUN --md drift.md
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _common import cpu_name

from medcls.artefact import open_artefact
from medcls.artefact.drift import predicted_index
from medcls.data.sources import load_data
from medcls.inference import Predictor
from medcls.metrics.drift import drift_tests
from medcls.runs import load_run
from medcls.testing.shifts import KINDS, shift

SEVERITIES = (0.5, 1.0, 1.5)


def bundle_and_run(args) -> tuple[Path, Path]:
    if args.bundle:
        return args.bundle, args.run
    from medcls import train
    from medcls.export import export_bundle

    run = args.work / "run"
    if not (run / "model.json").is_file():
        train("configs/pneumoniamnist.yaml", run_dir=run, overrides=["train.epochs=3", "train.progress=false"])
    bundle = args.work / "bundle"
    if not (bundle / "bundle.json").is_file():
        export_bundle(run, bundle)
    return bundle, run


def observe(pred: Predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, OOD scores and decided classes of ``images`` (N, H, W) uint8."""
    names, decide = list(pred.spec.class_names), partial(pred.postprocess.decide, spec=pred.spec)
    fs, ss, cs = [], [], []
    for lo in range(0, len(images), 128):
        x = torch.stack([pred.preprocess(im) for im in images[lo : lo + 128]])
        p, f = pred.probabilities_and_features(x)
        fs.append(f)
        ss.append(pred.ood.score(f))
        cs.append(predicted_index(p, decide, names))
    return np.concatenate(fs), np.concatenate(ss), np.concatenate(cs)


def rate(ref, obs, n: int, repeats: int, alpha: float) -> tuple[float, float]:
    """(share of repeats found drifted, median p-value of the features test)."""
    f, s, c = obs
    rng = np.random.default_rng(0)
    hits, p_feat = [], []
    for r in range(repeats):
        idx = rng.choice(len(s), n, replace=False)
        res = drift_tests(ref, f[idx], s[idx], c[idx], alpha=alpha, seed=r)
        hits.append(res["drifted"])
        p_feat.append(next(t["p_value"] for t in res["tests"] if t["test"] == "features"))
    return float(np.mean(hits)), float(np.median(p_feat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/drift"))
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--run", type=Path, default=None, help="the run the bundle was exported from (its test split)")
    ap.add_argument("--n", type=int, default=200, help="images per sample")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    bundle, run = bundle_and_run(args)
    pred = Predictor.load(bundle, backend="onnx")
    ref = open_artefact(bundle).drift
    test = load_data(load_run(run).config.data).test
    images = np.stack([test.load(i) for i in range(len(test))])
    t0 = time.perf_counter()
    rows = [("none", 0.0, *rate(ref, observe(pred, images), args.n, args.repeats, args.alpha))]
    for kind in KINDS:
        for sev in SEVERITIES:
            obs = observe(pred, shift(images, kind, sev, seed=1))
            rows.append((kind, sev, *rate(ref, obs, args.n, args.repeats, args.alpha)))
    took = time.perf_counter() - t0
    lines = [f"Bundle {bundle} ({len(ref.scores)} validation images in its reference); samples of {args.n} of the "
             f"{len(images)} test images, {args.repeats} repeats each, alpha {args.alpha} (Bonferroni over 3 input "
             f"tests). CPU: {cpu_name()}; {took:.0f} s.", "",
             "| shift | severity | found drifted | median p (features MMD) |", "|---|---:|---:|---:|"]
    for kind, sev, hit, p in rows:
        what = "false alarm rate" if kind == "none" else "detection rate"
        lines.append(f"| {kind} | {sev:g} | {hit:.0%} ({what}) | {p:.3g} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
