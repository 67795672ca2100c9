"""What a data check (:mod:`medcls.data.check.scan`) found, as data: :class:`DataReport` and the summaries
(counts, image formats, duplicates within and across splits, shared patients, warnings) it is made of.

It is written as ``report.json`` and ``report.html`` by :func:`medcls.reports.data_check.write_data_check`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from ..sources import SPLITS, SourceData
from ..table import ImageTable

SPLIT_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
MAX_LISTED = 200  # pairs kept per split pair in the report (counts are always complete)


@dataclass
class Scanned:
    """Fingerprints of the readable checked images, in split order."""

    split: np.ndarray  # split name per image
    index: np.ndarray  # row in its split's table
    ids: list[str]
    digest: list[bytes]
    phash: np.ndarray
    thumbs: np.ndarray

    def pair(self, a: int, b: int, distance: int, correlation: float) -> dict[str, Any]:
        if SPLITS.index(self.split[a]) > SPLITS.index(self.split[b]):
            a, b = b, a
        return {"split_a": str(self.split[a]), "id_a": self.ids[a], "index_a": int(self.index[a]),
                "split_b": str(self.split[b]), "id_b": self.ids[b], "index_b": int(self.index[b]),
                "distance": int(distance), "correlation": round(float(correlation), 4)}


@dataclass
class DataReport:
    """What :func:`check_data` found; :meth:`to_dict` is ``report.json`` (written with ``report.html`` by
    :func:`medcls.reports.data_check.write_data_check`)."""

    source: str
    options: dict[str, Any]
    dataset: str
    task: str
    classes: list[str]
    settings: dict[str, Any]
    counts: dict[str, Any]
    checked: dict[str, int]
    images: dict[str, Any]
    unreadable: list[dict[str, str]]
    exact_duplicates: dict[str, Any]
    near_duplicates: dict[str, Any]
    group_overlap: dict[str, Any] | None
    class_balance: dict[str, Any]
    leakage_reasons: list[str]
    warnings: list[str]
    notes: list[str]
    samples: dict[str, dict[str, list[int]]]  # split -> class -> table rows shown as thumbnails
    tables: dict[str, ImageTable] = field(default_factory=dict, repr=False, compare=False)

    @property
    def leakage(self) -> bool:
        """True when images or patients/groups are shared between splits."""
        return bool(self.leakage_reasons)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "tables"}
        return {"leakage": self.leakage, **d}

    def split_summary(self) -> dict[str, Any]:
        """What a run records of the check of its own splits (``RUN/leakage.json``): per pair of splits the
        exact and near-duplicate pairs and patients/groups shared, without the listed examples."""
        def counts(d: dict[str, Any]) -> dict[str, Any]:
            return {k: {f: v[f] for f in ("pairs", "clusters", "images")} for k, v in d["cross_split"].items()}

        return {"leakage": self.leakage, "reasons": self.leakage_reasons, "checked": self.checked,
                "exact_duplicates": counts(self.exact_duplicates), "near_duplicates": counts(self.near_duplicates),
                "group_overlap": self.group_overlap, "notes": self.notes,
                "rules": {k: self.settings[k] for k in ("exact_duplicate_rule", "near_duplicate_rule", "sampled")}}


def _dups(sc: Scanned, clusters: list[np.ndarray], edges: tuple[np.ndarray, ...] | None) -> dict[str, Any]:
    """Cross-split and within-split counts for duplicate clusters; ``edges`` (i, j, d, corr) or all pairs equal."""
    counts = np.array([[int((sc.split[c] == s).sum()) for s in SPLITS] for c in clusters]).reshape(-1, 3)

    def listed(s: str, t: str, limit: int) -> tuple[int, list[dict]]:
        if edges is not None:
            i, j, d, corr = edges
            a, b = sc.split[i], sc.split[j]
            m = ((a == s) & (b == t)) | ((a == t) & (b == s))
            return int(m.sum()), [sc.pair(*x) for x in zip(i[m][:limit], j[m][:limit], d[m][:limit], corr[m][:limit],
                                                              strict=True)]
        si, ti = SPLITS.index(s), SPLITS.index(t)
        n = int((counts[:, si] * counts[:, ti]).sum()) if s != t else int((counts[:, si] * (counts[:, si] - 1) // 2).sum())
        every = ((x, y) for c in clusters for x in c[sc.split[c] == s] for y in c[sc.split[c] == t] if s != t or x < y)
        return n, [sc.pair(x, y, 0, 1.0) for x, y in islice(every, limit)]

    cross, within = {}, {}
    for s, t in SPLIT_PAIRS:
        si, ti = SPLITS.index(s), SPLITS.index(t)
        both = (counts[:, si] > 0) & (counts[:, ti] > 0)
        n, pairs = listed(s, t, MAX_LISTED)
        cross[f"{s}/{t}"] = {"pairs": n, "clusters": int(both.sum()),
                             "images": {s: int(counts[both, si].sum()), t: int(counts[both, ti].sum())}, "listed": pairs}
    for si, s in enumerate(SPLITS):
        has = counts[:, si] > 1
        n, pairs = listed(s, s, 10)
        within[s] = {"pairs": n, "clusters": int(has.sum()), "copies": int((counts[has, si] - 1).sum()),
                     "examples": pairs}
    return {"cross_split": cross, "within_split": within}


def _components(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    _, lab = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    involved = np.unique(np.concatenate([i, j]))
    order = involved[np.argsort(lab[involved], kind="stable")]
    return np.split(order, np.flatnonzero(np.diff(lab[order])) + 1)


def _group_overlap(tables: dict[str, ImageTable]) -> dict[str, Any] | None:
    grouped = {s: np.asarray(t.groups).astype(str) for s, t in tables.items() if t.groups is not None}
    if len(grouped) < 2:
        return None
    out = {}
    for s, t in SPLIT_PAIRS:
        if s in grouped and t in grouped:
            shared = np.intersect1d(grouped[s], grouped[t])
            ins, int_ = np.isin(grouped[s], shared), np.isin(grouped[t], shared)
            examples = [{"group": str(g), f"ids_{s}": [tables[s].ids[k] for k in np.flatnonzero(grouped[s] == g)[:3]],
                         f"ids_{t}": [tables[t].ids[k] for k in np.flatnonzero(grouped[t] == g)[:3]]}
                        for g in shared[:20]]
            out[f"{s}/{t}"] = {"groups": len(shared), "images": {s: int(ins.sum()), t: int(int_.sum())},
                               "examples": examples}
    return out


def _counts(tables: dict[str, ImageTable], classes: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for s, t in tables.items():
        lab = np.asarray(t.labels)
        c = lab.sum(0) if lab.ndim == 2 else np.bincount(lab.astype(np.int64), minlength=len(classes))
        out[s] = {"n": len(t), "per_class": dict(zip(classes, c.astype(int).tolist(), strict=False))}
    return out


def _balance(counts: dict[str, Any], multilabel: bool, warn: list[str]) -> dict[str, Any]:
    """Majority/minority ratio per split; warnings for ratio > 3, classes with < 10 or no images."""
    out = {}
    for s, c in counts.items():
        per = c["per_class"]
        if not per or not c["n"]:
            continue
        big, small = max(per, key=per.get), min(per, key=per.get)
        ratio = per[big] / per[small] if per[small] else math.inf
        out[s] = {"majority": big, "minority": small, "ratio": round(ratio, 2) if per[small] else None}
        what = "positive images" if multilabel else "images"
        for name, k in per.items():
            if k == 0:
                warn.append(f"{s}: no {what} of class {name!r}")
            elif k < 10:
                warn.append(f"{s}: class {name!r} has only {k} {what if k > 1 else what[:-1]} (< 10)")
        if not multilabel and per[small] and ratio > 3:
            warn.append(f"{s}: class imbalance {big!r}/{small!r} = {per[big]}/{per[small]} = {ratio:.1f} (> 3)")
    return out


def _image_stats(results: list[tuple]) -> dict[str, Any]:
    from collections import Counter

    ok = [r for r in results if r[0] == "ok"]
    sizes = Counter(f"{r[3][1]}x{r[3][0]}" for r in ok)  # width x height
    hw = np.array([r[3] for r in ok]).reshape(-1, 2)
    stat = {k: {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())} if len(v) else None
            for k, v in (("height", hw[:, 0]), ("width", hw[:, 1]))}
    top = dict(sizes.most_common(20))
    if len(sizes) > 20:
        top["other"] = sum(sizes.values()) - sum(top.values())
    return {"modes": dict(Counter(r[1] for r in ok).most_common()),
            "bit_depth": {str(k): v for k, v in sorted(Counter(r[2] for r in ok).items())},
            "sizes": top, "distinct_sizes": len(sizes), **stat}


def plural(n: int, word: str) -> str:
    """``1 pair``, ``2 pairs``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def summarise(src: SourceData, tables: dict[str, ImageTable], sc: Scanned, near: tuple[np.ndarray, ...],
              results: list[tuple], *, unreadable: list[dict[str, str]], source_warnings: list[str],
              sampled: bool) -> dict[str, Any]:
    """The report fields computed from the scan: counts, image stats, duplicates, overlap, warnings."""
    from ..sources.folder import short_list

    warn = list(source_warnings)
    counts = _counts(tables, src.spec.class_names)
    balance = _balance(counts, src.spec.task == "multilabel", warn)
    by_digest: dict[bytes, list[int]] = {}
    for g, dg in enumerate(sc.digest):
        by_digest.setdefault(dg, []).append(g)
    exact = _dups(sc, [np.array(v) for v in by_digest.values() if len(v) > 1], None)
    near_d = _dups(sc, _components(len(sc.ids), near[0], near[1]), near)
    overlap = _group_overlap(tables)
    reasons: list[str] = []
    for what, d in (("exact duplicate", exact), ("near-duplicate", near_d)):
        for key, v in d["cross_split"].items():
            if v["pairs"]:
                s, t = key.split("/")
                reasons.append(f"{key}: {plural(v['pairs'], what + ' pair')} ({plural(v['clusters'], 'group')}: "
                               f"{v['images'][s]} {s} and {v['images'][t]} {t} images)")
        for s, v in d["within_split"].items():
            if v["pairs"]:
                warn.append(f"{s}: {v['copies']} {what} cop{'y' if v['copies'] == 1 else 'ies'} within the split "
                            f"({plural(v['pairs'], 'pair')})")
    for key, v in (overlap or {}).items():
        if v["groups"]:
            s, t = key.split("/")
            reasons.append(f"{key}: {plural(v['groups'], 'patient/group id')} in both splits "
                           f"({v['images'][s]} {s} and {v['images'][t]} {t} images)")
    if unreadable:
        warn.append(f"{plural(len(unreadable), 'unreadable file')}: {short_list([u['id'] for u in unreadable])}")
    notes = list(getattr(src, "notes", None) or [])
    if len(tables) < 2:
        notes.append(f"only the {', '.join(tables)} split exists: nothing to compare across splits; training "
                     "carves val/test from it, so duplicates within it become leakage there")
    elif overlap is None:
        notes.append("no patient/group ids in this source: patient overlap across splits not checked")
    if sampled:
        notes.append("--max-images: only an evenly spaced sample of each split was decoded (see 'checked'); "
                     "duplicates involving the other images are not found")
    return {"counts": counts, "images": _image_stats(results), "unreadable": unreadable,
            "exact_duplicates": exact, "near_duplicates": near_d, "group_overlap": overlap,
            "class_balance": balance, "leakage_reasons": reasons,
            "warnings": [f"leakage: {r}" for r in reasons] + warn, "notes": notes}
