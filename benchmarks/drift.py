"""Drift detection of a bundle (issue 26): false alarm rate without shift, detection rate under acquisition shifts.

Two parts, each as ``medcls drift`` tests (KS, MMD, Fisher; Bonferroni over the three at ``--alpha``):

1. Split-half (the calibrated part): each repeat splits the validation split at random in two halves; a
   reference is built from half A (the bundle's own PCA of the training features), and ``--n`` images of
   half B are tested against it, as they are (every alarm is false: the false alarm rate) and under each
   acquisition shift of :mod:`medcls.testing.shifts` (gamma, contrast, noise, blur) at several severities
   (the detection rate). Same population, other images: what the tests are built for.
2. The shipped reference (the whole validation split, stored by ``medcls export``) against ``--n`` images of
   the run's test split, as they are and shifted: what a user of ``medcls drift`` gets. PneumoniaMNIST's test
   split has another prevalence (62% against 74% pneumonia); the reference is matched to each sample's
   predicted-class mix, so that alone must not raise an alarm.

Features are computed once per image and shift; each repeat draws its sample anew.

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
from medcls.metrics.drift import DriftReference, drift_tests
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


Observed = tuple  # (features, OOD scores, decided classes) of N images


def take(obs: Observed, idx: np.ndarray) -> Observed:
    return tuple(a[idx] for a in obs)


def half_reference(ref: DriftReference, obs: Observed) -> DriftReference:
    """A reference from ``obs`` (validation images) on the bundle's PCA and threshold."""
    f, s, c = obs
    return DriftReference(ref.mean, ref.components, ref.project(f), s, c, ref.threshold, ref.class_names)


def rate(draw, args) -> tuple[float, float]:
    """(share of ``args.repeats`` found drifted, median p of the features test); ``draw(rng)`` gives each repeat's
    (reference, sample)."""
    rng, hits, p_feat = np.random.default_rng(0), [], []
    for r in range(args.repeats):
        reference, sample = draw(rng)
        res = drift_tests(reference, *sample, alpha=args.alpha, seed=r)
        hits.append(res["drifted"])
        p_feat.append(next(t["p_value"] for t in res["tests"] if t["test"] == "features"))
    return float(np.mean(hits)), float(np.median(p_feat))


def split_half_rate(ref: DriftReference, val: Observed, shifted: Observed, args) -> tuple[float, float]:
    """Half A of the validation images is the reference, ``args.n`` of half B, taken from ``shifted``, the sample."""

    def draw(rng):
        order = rng.permutation(len(val[1]))
        a, b = order[: len(order) // 2], order[len(order) // 2 :]
        return half_reference(ref, take(val, a)), take(shifted, rng.choice(b, args.n, replace=False))

    return rate(draw, args)


def shipped_rate(ref: DriftReference, obs: Observed, args) -> tuple[float, float]:
    """The bundle's own reference against ``args.n`` images of ``obs`` per repeat."""
    return rate(lambda rng: (ref, take(obs, rng.choice(len(obs[1]), args.n, replace=False))), args)


def table(rows: list[tuple]) -> list[str]:
    out = ["| shift | severity | found drifted | median p (features MMD) |", "|---|---:|---:|---:|"]
    for kind, sev, hit, p in rows:
        what = "false alarms" if kind == "none" else "detected"
        out.append(f"| {kind} | {sev:g} | {hit:.0%} {what} | {p:.3g} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/drift"))
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--run", type=Path, default=None, help="the run the bundle was exported from (its test split)")
    ap.add_argument("--n", type=int, default=100, help="images per sample")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    bundle, run = bundle_and_run(args)
    pred = Predictor.load(bundle, backend="onnx")
    ref = open_artefact(bundle).drift
    data = load_data(load_run(run).config.data)
    splits = {name: np.stack([part.load(i) for i in range(len(part))]) for name, part in
              (("val", data.val), ("test", data.test))}
    t0 = time.perf_counter()
    half, shipped = [], []
    for kind, sev in [("none", 0.0)] + [(k, v) for k in KINDS for v in SEVERITIES]:
        seen = {name: observe(pred, images if kind == "none" else shift(images, kind, sev, seed=1))
                for name, images in splits.items()}
        if kind == "none":
            val = seen["val"]
        half.append((kind, sev, *split_half_rate(ref, val, seen["val"], args)))
        shipped.append((kind, sev, *shipped_rate(ref, seen["test"], args)))
    took = time.perf_counter() - t0
    lines = [f"Bundle {bundle}; samples of {args.n} images, {args.repeats} repeats each, alpha {args.alpha} "
             f"(Bonferroni over 3 input tests). CPU: {cpu_name()}; {took:.0f} s.", "",
             f"Split-half: reference {len(val[1]) // 2} validation images, sample from the other half.", "",
             *table(half), "",
             f"Shipped reference ({len(ref.scores)} validation images) against the test split ({len(splits['test'])} "
             "images, another prevalence):", "", *table(shipped)]
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
