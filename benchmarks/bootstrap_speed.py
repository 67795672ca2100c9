"""Wall time of :func:`medcls.metrics.bootstrap_ci` for all binary headline metrics.

624 synthetic binary cases (390 positive, the size of the PneumoniaMNIST test
split), 2,000 stratified resamples, seed 0; median of ``--repeats`` runs after
one warm-up. Target: under 1 s.

    python benchmarks/bootstrap_speed.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from medcls.metrics import bootstrap_ci


def synthetic(n: int = 624, n_pos: int = 390, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=int)
    y[rng.choice(n, n_pos, replace=False)] = 1
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y - 0.5)))
    return y, np.c_[1 - p, p]


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args(argv)
    y, probs = synthetic()
    kw = {"class_names": ["normal", "pneumonia"], "n_resamples": args.resamples, "seed": 0}
    bootstrap_ci("binary", y, probs, **kw)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = bootstrap_ci("binary", y, probs, **kw)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(f"bootstrap_ci binary, {len(y)} cases ({int(y.sum())} positive), {args.resamples} resamples, "
          f"{len([k for k, v in res.items() if isinstance(v, dict)])} metrics: "
          f"median {median:.3f} s over {args.repeats} runs (min {min(times):.3f}, max {max(times):.3f}); "
          f"< 1 s: {median < 1.0}")
    print(f"auc {res['auc']['value']:.4f} [{res['auc']['low']:.4f}, {res['auc']['high']:.4f}]")
    return median


if __name__ == "__main__":
    main()
