"""Have the images a model sees drifted from its validation data? Two-sample tests, as pure functions.

What a bundle computes for any image is compared with the same quantities on the validation split, stored at
export (:class:`DriftReference`):

- ``ood_score``: Kolmogorov-Smirnov test of the out-of-distribution scores;
- ``features``: maximum mean discrepancy of the penultimate features projected on their first principal
  components (Gaussian kernel, median bandwidth, permutation p-value; Gretton et al. 2012). Rabanser et al.
  (2019, "Failing loudly") found MMD on such reduced representations among the most reliable detectors;
- ``flagged``: Fisher's exact test of the share the gate flags against the share it flags on validation.

A change of prevalence alone (label shift) moves all three without any change in how images look, so the
validation reference is first resampled to the sample's predicted-class mix; that mix is compared apart
(``prediction mix``, a chi-square test) and reported, but not counted as drift of the inputs. The verdict:
drifted when a test of the inputs has p < ``alpha`` / 3 (Bonferroni).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

COMPONENTS = 32  # principal components kept of the penultimate features
MMD_CAP = 500  # cases per side in the MMD (the kernel matrix is (2 x cap)^2)
PERMUTATIONS = 500
INPUT_TESTS = ("ood_score", "features", "flagged")


@dataclass
class DriftReference:
    """What the validation split looked like to the model: PCA of the features, the projected features, the
    out-of-distribution scores and the predicted class of each validation image, and the gate's threshold."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D)
    features: np.ndarray  # (n, k) validation features, projected
    scores: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,) class index
    threshold: float
    class_names: list[str] = field(default_factory=list)

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.mean) @ self.components.T


def fit_reference(train_features: np.ndarray, val_features: np.ndarray, val_scores: np.ndarray,
                  val_predicted: np.ndarray, threshold: float, class_names: list[str],
                  k: int = COMPONENTS) -> DriftReference:
    """PCA on the training features (scikit-learn), the validation split projected on it."""
    from sklearn.decomposition import PCA

    f = np.asarray(train_features, np.float64)
    pca = PCA(n_components=min(k, f.shape[1], max(len(f) - 1, 1)), random_state=0).fit(f)
    ref = DriftReference(pca.mean_, pca.components_, np.empty(0), np.asarray(val_scores, np.float64),
                         np.asarray(val_predicted, np.int64), float(threshold), list(class_names))
    ref.features = ref.project(val_features)
    return ref


def matched_reference(ref_predicted: np.ndarray, predicted: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of reference cases, drawn without replacement, whose predicted-class mix is the sample's: as many
    as the rarest class allows (duplicates would make the tests overconfident)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(predicted, return_counts=True)
    share = counts / counts.sum()
    pools = [np.flatnonzero(ref_predicted == c) for c in classes]
    have = [(len(p), s) for p, s in zip(pools, share, strict=True) if len(p)]
    if not have:  # no predicted class of the sample exists in the reference: compare with all of it
        return np.arange(len(ref_predicted))
    size = min(n / s for n, s in have)
    return np.concatenate([rng.choice(p, min(len(p), int(size * s)), replace=False)
                           for p, s in zip(pools, share, strict=True) if len(p)])


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """(MMD^2 (biased), permutation p-value) of samples ``x`` and ``y`` with a Gaussian kernel whose bandwidth
    is the median pairwise distance of the pooled samples."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    med = np.median(d2[np.triu_indices(len(z), 1)])
    kern = np.exp(-d2 / (med if med > 0 else 1.0))
    n = len(x)

    def stat(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        return kern[np.ix_(a, a)].mean() + kern[np.ix_(b, b)].mean() - 2 * kern[np.ix_(a, b)].mean()

    observed = stat(np.arange(len(z)))
    null = np.array([stat(rng.permutation(len(z))) for _ in range(permutations)])
    return float(observed), float((1 + np.sum(null >= observed)) / (1 + permutations))


def _row(test: str, statistic: float, p: float, recent: str, reference: str) -> dict[str, Any]:
    return {"test": test, "statistic": float(statistic), "p_value": float(p), "recent": recent,
            "reference": reference}


def drift_tests(ref: DriftReference, features: np.ndarray, scores: np.ndarray, predicted: np.ndarray,
                alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Every test of a batch of recent images against ``ref``, and the verdict (see the module doc)."""
    from scipy import stats

    if len(scores) < 2:
        raise ValueError(f"drift needs at least 2 recent images, got {len(scores)}")
    predicted = np.asarray(predicted, np.int64)
    idx = matched_reference(ref.predicted, predicted, seed)
    ks = stats.ks_2samp(scores, ref.scores[idx])
    rng = np.random.default_rng(seed)
    x = ref.project(features)
    x = x[rng.choice(len(x), min(len(x), MMD_CAP), replace=False)]
    y = ref.features[rng.choice(idx, min(len(idx), MMD_CAP), replace=False)]
    mmd, p_mmd = mmd_test(x, y, seed=seed)
    flagged, ref_flagged = int(np.sum(scores > ref.threshold)), int(np.sum(ref.scores[idx] > ref.threshold))
    expected = ref_flagged / len(idx)
    # Fisher's exact test: the reference's share is itself a sample (a binomial test against it as a known
    # rate raised false alarms on small validation splits)
    fisher = stats.fisher_exact([[flagged, len(scores) - flagged], [ref_flagged, len(idx) - ref_flagged]],
                                alternative="greater")
    rows = [_row("ood_score", ks.statistic, ks.pvalue, f"median {np.median(scores):.3g}",
                 f"median {np.median(ref.scores[idx]):.3g}"),
            _row("features", mmd, p_mmd, f"{len(x)} images, {x.shape[1]} components", f"{len(y)} validation images"),
            _row("flagged", flagged / len(scores), fisher.pvalue, f"{flagged}/{len(scores)} flagged",
                 f"{expected:.1%} on validation")]
    rows.append(_mix_row(ref, predicted))
    bar = alpha / len(INPUT_TESTS)
    for r in rows:
        r["drifted"] = bool(r["p_value"] < bar)
    return {"drifted": any(r["drifted"] for r in rows if r["test"] in INPUT_TESTS), "alpha": alpha,
            "bonferroni_bar": bar, "n_recent": len(scores), "n_reference": len(ref.scores), "tests": rows}


def _mix_row(ref: DriftReference, predicted: np.ndarray) -> dict[str, Any]:
    from scipy import stats

    k = max(len(ref.class_names), int(max(predicted.max(), ref.predicted.max())) + 1)
    seen = np.bincount(predicted, minlength=k).astype(float)
    share = (np.bincount(ref.predicted, minlength=k) + 0.5) / (len(ref.predicted) + 0.5 * k)
    chi = stats.chisquare(seen, share / share.sum() * seen.sum())
    names = ref.class_names or [str(i) for i in range(k)]

    def mix(counts: np.ndarray) -> str:
        return ", ".join(f"{n} {c / counts.sum():.0%}" for n, c in zip(names, counts, strict=False))

    return _row("prediction mix", chi.statistic, chi.pvalue, mix(seen), mix(np.bincount(ref.predicted, minlength=k)))
