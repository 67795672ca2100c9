"""External validation under acquisition shifts (issue 27): how a run's figures move on PneumoniaMNIST's test images
seen through another detector (gamma, contrast, noise, blur; :mod:`medcls.testing.shifts`), and what each
recalibration, fitted on half of the shifted cases, gives back on the other half.

Each shifted test set is written as a MedMNIST-layout file and validated with ``medcls.validate`` exactly as
``medcls validate RUN medmnist:pneumoniamnist -O path=FILE --split test --recalibrate METHOD`` would (the run's
Predictor, its temperature and operating point; bootstrap CIs; fit and held-out halves per class, seed 0).

    python benchmarks/external_validation.py RUN --work /tmp/ext --md external.md [--severity 1.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import cpu_name

from medcls import validate
from medcls.data.sources.medmnist import locate_or_download
from medcls.metrics.external import RECALIBRATIONS
from medcls.reports.kit import fmt_ci
from medcls.testing.shifts import KINDS, shift

FIGS = ("auc", "citl", "slope", "oe", "ici")


def shifted_files(work: Path, kinds: list[str], severity: float) -> dict[str, Path]:
    """``{kind: npz}``: PneumoniaMNIST with its test images shifted (``none``: as they are)."""
    with np.load(locate_or_download("pneumoniamnist")) as z:
        arrays = {k: z[k] for k in z.files}
    out = {}
    for kind in ["none", *kinds]:
        path = work / f"pneumoniamnist_{kind}.npz"
        if not path.is_file():
            images = arrays["test_images"] if kind == "none" else shift(arrays["test_images"], kind, severity)
            np.savez(path, **{**arrays, "test_images": images})
        out[kind] = path
    return out


def rows(run: str, files: dict[str, Path], work: Path, n_bootstrap: int) -> list[str]:
    """One Markdown row per shift and recalibration: held-out figures before and after."""
    lines = []
    for kind, path in files.items():
        for method in RECALIBRATIONS:
            v = validate(run, "medmnist:pneumoniamnist", options={"path": str(path)}, split="test",
                         recalibrate=method, n_bootstrap=n_bootstrap, out_dir=work, name=f"{kind}-{method}")
            r = v["recalibration"]
            whole = v["external"]["figures"]
            cells = [fmt_ci(whole["citl"]), fmt_ci(whole["oe"])]
            cells += [f"{fmt_ci(r['before'][f])} → {fmt_ci(r['after'][f])}" for f in ("citl", "slope", "oe", "ici")]
            lines.append(f"| {kind} | {method} | " + " | ".join(cells) + f" | {fmt_ci(whole['auc'])} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/external-validation"))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--severity", type=float, default=1.5)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--md", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    head = ["| shift | recalibration | CITL, all 624 | O/E, all 624 | CITL held-out: before → after | "
            "slope: before → after | O/E: before → after | ICI: before → after | AUC, all 624 |",
            "|---|---|---|---|---|---|---|---|---|"]
    body = rows(a.run, shifted_files(a.work, a.kinds, a.severity), a.work, a.n_bootstrap)
    text = "\n".join([f"severity {a.severity}, {a.n_bootstrap} resamples, {cpu_name()}", "", *head, *body, ""])
    if a.md:
        a.md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
