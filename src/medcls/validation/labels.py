"""Which class of the model each label of an external site is: matched by name, or by a label map.

A label map is a YAML mapping from the site's labels to the model's classes; several site labels may map to one
class, and a label mapped to ``null`` is dropped (its cases are left out)::

    NORMAL: normal
    BACTERIA: pneumonia
    VIRUS: pneumonia
    UNCLEAR: null

Labels the map does not name are matched by name (exactly, else ignoring case when that is unambiguous). A site
label that matches no class, or a class of the model no site label reaches, is one :class:`DataError` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError, DataError, did_you_mean


@dataclass(frozen=True)
class ClassMatch:
    """``target[i]``: the model class index of site label ``i`` (-1: dropped); ``mapping``: by name."""

    target: np.ndarray
    mapping: dict[str, str | None]
    notes: list[str] = field(default_factory=list)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Site label indices -> model class indices (-1 for dropped labels)."""
        return self.target[np.asarray(labels, np.int64)]


def read_label_map(path: str | Path) -> dict[str, str | None]:
    """The ``{site label: model class or None}`` mapping of a YAML file (see the module)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--label-map {p}: " + ("a directory; expected a YAML file (site label: model class)"
                                                  if p.is_dir() else "no such file"))
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--label-map {p} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"--label-map {p} must map site labels to model classes (e.g. 'VIRUS: pneumonia', "
                          f"'UNCLEAR: null' to drop), got {type(doc).__name__}")
    bad = {k: v for k, v in doc.items() if not (v is None or isinstance(v, str))}
    if bad:
        k = next(iter(bad))
        raise ConfigError(f"--label-map {p}: {k!r} maps to {bad[k]!r}; each label maps to one model class name, "
                          "or to null to drop it")
    return {str(k): v for k, v in doc.items()}


def _by_name(label: str, model: Sequence[str]) -> str | None:
    if label in model:
        return label
    folded = [c for c in model if c.casefold() == label.casefold()]
    return folded[0] if len(folded) == 1 else None


def _check_map(label_map: dict[str, str | None], site: list[str], model: list[str], where: str) -> None:
    unknown = [k for k in label_map if k not in site]
    if unknown:
        raise DataError(f"--label-map names label(s) {', '.join(map(repr, unknown))} that {where} does not have."
                        f"{did_you_mean(unknown[0], site)} Its labels: {', '.join(site)}")
    wrong = [v for v in label_map.values() if v is not None and v not in model]
    if wrong:
        raise DataError(f"--label-map maps to {', '.join(map(repr, wrong))}, not a class of the model."
                        f"{did_you_mean(wrong[0], model)} Model classes: {', '.join(model)}")


def match_classes(site: Sequence[str], model: Sequence[str], label_map: dict[str, str | None] | None = None,
                  *, where: str = "the source") -> ClassMatch:
    """Match every site label to a model class (see the module); one line naming every mismatch."""
    site, model, label_map = [str(s) for s in site], [str(c) for c in model], dict(label_map or {})
    _check_map(label_map, site, model, where)
    mapping = {s: label_map[s] if s in label_map else _by_name(s, model) for s in site}
    extra = [s for s in site if s not in label_map and mapping[s] is None]
    missing = [c for c in model if c not in mapping.values()]
    problems = []
    if extra:
        problems.append(f"{where} has label(s) {', '.join(map(repr, extra))} that the model lacks")
    if missing:
        problems.append(f"the model has class(es) {', '.join(map(repr, missing))} that {where} lacks")
    if problems:
        raise DataError(f"{'; '.join(problems)} (model classes: {', '.join(model)}; site labels: {', '.join(site)});"
                        " map or drop labels with --label-map map.yaml")
    notes = [f"site label {s!r} counted as {c!r}" for s, c in mapping.items() if c is not None and c != s]
    notes += [f"site label {s!r} dropped (--label-map)" for s, c in mapping.items() if c is None]
    target = np.asarray([-1 if mapping[s] is None else model.index(mapping[s]) for s in site], np.int64)
    return ClassMatch(target, mapping, notes)


def check_counts(labels: np.ndarray, model: Sequence[str], where: str = "the source") -> np.ndarray:
    """Cases per model class; a class with none is one DataError line (its metrics would be undefined)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(model))
    empty = [c for c, n in zip(model, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"{where} has no case of class(es) {', '.join(map(repr, empty))} after label matching "
                        f"(counts: {', '.join(f'{c} {n}' for c, n in zip(model, counts, strict=True))}): "
                        "discrimination and calibration need cases of every class")
    return counts
