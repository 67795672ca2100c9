"""The source registry: ``data.source: 'kind:argument'`` -> a source function -> :class:`SourceData`.

Each source module registers itself with ``@SOURCES.register(kind)``; importing
:mod:`medcls.data.sources` imports them all.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from ...choices import Split
from ...errors import ConfigError, did_you_mean
from ...registry import Registry
from ..spec import DatasetSpec
from ..table import ImageTable

SPLITS = get_args(Split)


@dataclass
class SourceData:
    spec: DatasetSpec
    splits: dict[str, ImageTable | None]
    notes: list[str] | None = None


SourceFn = Callable[..., SourceData]
SOURCES: Registry[SourceFn] = Registry("data source", ConfigError)


def default_data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Lookup order: explicit ``data_dir``, then ``$MEDCLS_DATA_DIR``, then ``./data``."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("MEDCLS_DATA_DIR"):
        dirs.append(Path(os.environ["MEDCLS_DATA_DIR"]).expanduser())
    dirs.append(Path("data"))
    return dirs


def parse_source(source: str) -> tuple[str, str]:
    kind, sep, arg = source.partition(":")
    if not sep or not arg:
        raise ConfigError(
            f"data.source must look like 'kind:argument' (e.g. medmnist:pneumoniamnist, folder:/data/chest_xray), "
            f"got {source!r}. Kinds: {', '.join(SOURCES)}"
        )
    return kind.strip(), arg.strip()


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``--option`` items, ``["size=64", "path=x.npz"]`` -> ``{"size": 64, "path": "x.npz"}`` (values read as YAML
    scalars; a value that is not YAML stays the string it was)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects KEY=VALUE such as size=64, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def call_source(kind: str, arg: str, data_dir: str | None, options: dict, strict: bool = False) -> SourceData:
    fn = SOURCES.get(kind)
    params = inspect.signature(fn).parameters
    valid = [p for p in params if p not in ("arg", "data_dir", "table")]  # table: Python callers only
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"data.options.{key} is not an option of source {kind!r}.{did_you_mean(key, valid)} "
                f"Options: {', '.join(valid) or 'none'}"
            )
    kwargs = dict(options)
    if "strict" in params and strict and "strict" not in kwargs:
        kwargs["strict"] = True
    if "data_dir" in params:
        kwargs["data_dir"] = data_dir
    try:
        return fn(arg, **kwargs)
    except TypeError as e:  # wrong option type
        raise ConfigError(f"source {kind!r}: bad options {options}: {e}") from None
