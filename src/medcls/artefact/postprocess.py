"""``Postprocess``: how logits become calibrated probabilities and a decision, per checkpoint.

Calibrated probabilities = softmax(logits / T) (sigmoid for multilabel, one T for all
labels); the binary decision = p(positive) >= the selected operating point's threshold;
multiclass = arg-max; multilabel = the labels whose probability reaches their own
threshold (possibly none: "no finding").

A run keeps one entry per checkpoint in ``postprocess.json`` (``{"best": {...},
"last": {...}}``), each naming the checkpoint it was fitted for (epoch and sha256) and
what it was fitted on; an entry whose checkpoint file changed since is stale and not
used. A bundle carries the entry of the checkpoint it was exported from.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.spec import DatasetSpec
from ..errors import ConfigError, RunError, did_you_mean
from ..metrics.operating_points import provenance
from ..utils import atomic_write_json, file_sha256

log = logging.getLogger("medcls")

POSTPROCESS_FILE = "postprocess.json"
NO_FINDING = "no finding"


def findings_text(findings: Sequence[str]) -> str:
    """A multi-label decision as one string: labels joined by ``;``, or ``no finding``."""
    return ";".join(findings) if len(findings) else NO_FINDING


@dataclass
class Postprocess:
    """Temperature and operating point(s) of one checkpoint, with what they were fitted on.

    ``fitted_on`` is ``"val"`` when fitted by the calibration step, ``"none"`` for the
    uncalibrated fallback (T = 1, threshold 0.5). ``calibrated`` is True when a
    temperature other than 1 was fitted.
    """

    temperature: float = 1.0
    selected: str = "default"
    threshold: float = 0.5
    thresholds: dict[str, float] | None = None
    threshold_rules: dict[str, str] | None = None
    operating_points: dict[str, Any] | None = None
    fitted_on: str = "none"
    n_val: int | None = None
    calibrated: bool = False
    checkpoint: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    recalibration: dict[str, Any] | None = None  # an update on external data and what it was fitted on: binary
    # intercept/logistic: logit p' = intercept + slope * logit p after T; temperature: T above is the updated one

    def __post_init__(self) -> None:
        t = self.temperature
        if not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise RunError(f"postprocess: temperature must be a finite number > 0, got {t!r}")
        for name, v in {"threshold": self.threshold, **(self.thresholds or {})}.items():
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise RunError(f"postprocess: threshold {name!r} must be within [0, 1], got {v!r}")
        r = self.recalibration
        if r is not None and not (isinstance(r, dict) and (r.get("method") == "temperature" or (all(
                isinstance(r.get(k), int | float) and math.isfinite(r[k]) for k in ("intercept", "slope"))
                and r["slope"] > 0 and r.get("positive_index") in (0, 1)))):
            raise RunError("postprocess: recalibration must be a temperature update, or give a finite intercept, "
                           f"a slope > 0 and the positive_index (0 or 1) of a binary model, got {r!r}")

    @property
    def fitted(self) -> bool:
        return self.fitted_on != "none"

    @classmethod
    def uncalibrated(cls, note: str, threshold: float = 0.5) -> Postprocess:
        return cls(threshold=threshold, notes=[note])

    # ------------------------------------------------------------------ applying it
    def probabilities(self, logits: np.ndarray, task: str) -> np.ndarray:
        """softmax(logits / T) (sigmoid for multilabel), then the recalibration's update of a binary model's
        positive-class log-odds when there is one."""
        from ..engine.predict import probabilities

        p = probabilities(np.asarray(logits, np.float32) / self.temperature, task)
        r = self.recalibration
        if r is None or task != "binary" or r.get("method") == "temperature":  # a temperature update is T itself
            return p
        from ..metrics.external import recalibrate

        pos = int(r["positive_index"])
        out = np.empty_like(p)
        out[:, pos] = recalibrate(p[:, pos], r["intercept"], r["slope"])
        out[:, 1 - pos] = 1 - out[:, pos]
        return out

    def label_thresholds(self, class_names: Sequence[str]) -> dict[str, float]:
        """Multilabel: the threshold of every label (``threshold`` for all when none were chosen per label)."""
        from ..metrics.operating_points import threshold_vector

        names = list(class_names)
        given = dict(self.thresholds) if self.thresholds is not None else dict.fromkeys(names, self.threshold)
        extra = [k for k in given if k not in names]
        if extra:
            raise ConfigError(f"thresholds name unknown label(s) {extra}.{did_you_mean(extra[0], names)} "
                              f"Labels: {names}")
        return dict(zip(names, threshold_vector(given, names).tolist(), strict=True))

    def decide(self, p: np.ndarray, spec: DatasetSpec) -> str | list[str]:
        """Binary: the class at the operating point; multiclass: arg-max; multilabel: labels with p >= their
        threshold (possibly none)."""
        names = list(spec.class_names)
        if spec.task == "multilabel":
            thr = self.label_thresholds(names)
            return [c for c, v in zip(names, p, strict=True) if v >= thr[c]]
        if spec.task == "binary":
            pos = spec.positive_index
            return names[pos] if p[pos] >= self.threshold else names[1 - pos]
        return names[int(np.argmax(p))]

    def decision(self, spec: DatasetSpec, predicted: str | list[str]) -> dict[str, Any]:
        """The ``decision`` block of a prediction: operating point and threshold(s)."""
        if spec.task == "binary":
            where, r = provenance(self.selected, self.fitted_on), self.recalibration
            if r is not None:  # the threshold was carried to the recalibrated scale: say so where it is shown
                where += f", moved by {r['method']} recalibration on {(r.get('fitted_on') or {}).get('source', '?')}"
            return {"operating_point": self.selected, "threshold": self.threshold,
                    "positive_class": spec.class_names[spec.positive_index], "provenance": where}
        if spec.task == "multilabel":
            return {"operating_point": self.selected, "thresholds": self.label_thresholds(spec.class_names),
                    "findings": list(predicted), "no_finding": not predicted}
        return {"operating_point": "argmax"}

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "postprocess") -> Postprocess:
        if not isinstance(d, dict):
            raise RunError(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as e:
            raise RunError(f"{where} is malformed: {e}") from None


def checkpoint_identity(path: Path, meta: dict[str, Any], name: str) -> dict[str, Any]:
    """What a postprocess entry was fitted for: the checkpoint's name, epoch and sha256."""
    return {"name": name, "epoch": meta.get("epoch"), "sha256": file_sha256(path)}


def read_postprocess(run_path: str | Path, checkpoint: str, checkpoint_file: Path | None = None) -> Postprocess | None:
    """The entry of ``checkpoint`` in ``run_path/postprocess.json``; None when absent or stale
    (``checkpoint_file`` changed since the entry was fitted)."""
    p = Path(run_path) / POSTPROCESS_FILE
    if not p.is_file():
        return None
    try:
        store = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{p} is unreadable: {e}") from None
    entry = store.get(checkpoint) if isinstance(store, dict) else None
    if entry is None:
        return None
    post = Postprocess.from_dict(entry, f"{p} [{checkpoint}]")
    if checkpoint_file is not None and checkpoint_file.is_file():
        want = (post.checkpoint or {}).get("sha256")
        if want != file_sha256(checkpoint_file):
            log.warning("%s: the calibration of %r was fitted on an earlier version of that checkpoint "
                        "(epoch %s); it is not used", p, checkpoint, (post.checkpoint or {}).get("epoch"))
            return None
    return post


def write_postprocess(run_path: str | Path, checkpoint: str, post: Postprocess) -> Path:
    """Store ``post`` as the entry of ``checkpoint``, keeping the other checkpoints' entries."""
    p = Path(run_path) / POSTPROCESS_FILE
    store: dict[str, Any] = {}
    if p.is_file():
        try:
            loaded = json.loads(p.read_text())
            store = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            store = {}
    store[checkpoint] = post.to_dict()
    atomic_write_json(p, store)
    return p
