"""Search spaces for ``medcls tune``: a YAML mapping of dotted config keys to distributions, checked up front.

::

    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    train.batch_size: {type: categorical, choices: [64, 128]}
    model.drop_rate: {type: float, low: 0.0, high: 0.3}

Each key must be a config key (did-you-mean otherwise) that does not change the
data or how trials are scored; each bound or choice must validate as a config value.
Also :func:`parse_budget` for ``--budget``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, build_config, load_yaml
from ..errors import ConfigError, did_you_mean

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.weight_decay": {"type": "float", "low": 1e-5, "high": 0.2, "log": True},
    "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "transforms.strength": {"type": "float", "low": 0.0, "high": 2.0},
    "train.ema": {"type": "categorical", "choices": [False, True]},
    "train.ema_decay": {"type": "float", "low": 0.9, "high": 0.999},
    "train.batch_size": {"type": "categorical", "choices": [64, 128, 256]},
}
# Keys that would change the data, how it is scored, or where runs go: never tuned.
FROZEN = ("data.", "eval.", "name", "output_dir", "seed", "train.monitor", "train.device", "train.threads",
          "train.progress")
_FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}


# ------------------------------------------------------------------ budget
def parse_budget(text: str | float | None) -> float | None:
    """``'900s'``, ``'30m'``, ``'2h'``, ``'1h30m'`` or a number of seconds -> seconds (None stays None)."""
    if text is None:
        return None
    s = str(text).strip().lower().replace(" ", "")
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    elif re.fullmatch(r"(\d+(\.\d+)?[smhd])+", s):
        seconds = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", s))
    else:
        raise ConfigError(f"--budget expects a wall-clock duration such as 900s, 30m, 2h or 1h30m, got {text!r}")
    if seconds <= 0:
        raise ConfigError(f"--budget must be positive, got {text!r}")
    return seconds


# ------------------------------------------------------------------ search space
@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a dotted config key and its distribution."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log,
                **({"step": self.step} if self.step else {})}


def config_keys() -> list[str]:
    """Every leaf key of :class:`Config` as ``section.key``."""
    keys = []
    for name, f in Config.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            keys += [f"{name}.{k}" for k in sub.model_fields]
        else:
            keys.append(name)
    return keys


def _with(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


def parse_space(raw: Any, base: Config, source: str = "search space") -> list[Param]:
    """Validate a ``{key: {type, low, high, log} | {type: categorical, choices}}`` mapping against ``base``."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: expected a mapping of config keys such as "
                          f"'train.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}', got {raw!r}")
    keys, params = config_keys(), []
    for key, spec in raw.items():
        key = str(key)
        if key not in keys:
            raise ConfigError(f"{source}: unknown config key {key!r}.{did_you_mean(key, keys)} "
                              f"Keys look like train.lr, transforms.strength, model.drop_rate.")
        if key.startswith(("data.", "eval.")) or key in FROZEN:
            raise ConfigError(f"{source}: {key} cannot be tuned (data.*, eval.*, seed, monitor and output keys "
                              f"would change the data or how trials are compared)")
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: {key} must be a mapping such as {{type: float, low: 0, high: 1}}, got {spec!r}")
        kind = spec.get("type")
        if kind not in _FIELDS:
            raise ConfigError(f"{source}: {key}.type must be float, int or categorical, got {kind!r}."
                              + did_you_mean(str(kind), _FIELDS))
        extra = set(spec) - _FIELDS[kind] - {"type"}
        if extra:
            bad = sorted(extra)[0]
            raise ConfigError(f"{source}: {key}: unknown field {bad!r} for type {kind}.{did_you_mean(bad, _FIELDS[kind])} "
                              f"Fields: {', '.join(sorted(_FIELDS[kind]))}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or any(
                    c is not None and not isinstance(c, bool | int | float | str) for c in choices):
                raise ConfigError(f"{source}: {key}.choices must be a non-empty list of numbers, strings or "
                                  f"booleans, got {choices!r}")
            p, values = Param(key, kind, choices=tuple(choices)), choices
        else:
            low, high, log_, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
            num = int if kind == "int" else (int, float)
            if not all(isinstance(v, num) and not isinstance(v, bool) for v in (low, high)) or not low < high:
                raise ConfigError(f"{source}: {key} needs numeric low < high ({kind}), got low={low!r}, high={high!r}")
            if log_ and low <= 0:
                raise ConfigError(f"{source}: {key} has log: true, so low must be > 0, got {low!r}")
            p = Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                      log_, step)
            values = [low, high]
        for v in values:
            try:
                build_config(_with(base.to_dict(), key, v))
            except ConfigError as e:
                raise ConfigError(f"{source}: {key}={v!r} is not a valid value: {e}") from None
        params.append(p)
    return params


def load_space(path: str | Path | None, base: Config) -> list[Param]:
    """The search space from a YAML file (replacing the default) or :data:`DEFAULT_SPACE`."""
    if path is None:
        return parse_space(DEFAULT_SPACE, base, "default search space")
    if isinstance(path, dict):
        return parse_space(path, base)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space file not found: {p} (expected a YAML mapping such as "
                          f"'train.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}')")
    try:
        raw = load_yaml(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--space file {p} is not valid YAML: {e}") from None
    return parse_space(raw, base, str(p))


def trial_config(base: Config, params: dict[str, Any], name: str) -> Config:
    raw = base.to_dict()
    for k, v in params.items():
        raw = _with(raw, k, v)
    raw["name"] = name
    return build_config(raw)
