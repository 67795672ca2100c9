"""What the command modules share: option types, result tables that fit, the --metadata option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DataError
from ..reports.kit import fmt, fmt_ci

Sets = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config value: --set train.epochs=5 (repeatable).")]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (defaults when omitted).")]
DataDir = Annotated[str | None, typer.Option(help="Where datasets are looked up (then $MEDCLS_DATA_DIR, then ./data).")]
Checkpoint = Annotated[str, typer.Option(help="best | last")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]

METADATA_HELP = "Fused models: JSON object of metadata (and text), e.g. '{\"age\": 40, \"view\": \"frontal\"}'."


def overrides(sets: list[str] | None, data_dir: str | None = None) -> list[str]:
    """``--set`` items, plus ``--data-dir`` as ``data.data_dir``."""
    return list(sets or []) + ([f"data.data_dir={data_dir}"] if data_dir else [])


def with_ci(metrics: dict, keys) -> dict[str, str]:
    """'0.9612 [0.9480, 0.9731]' per metric when a bootstrap CI is present."""
    ci = metrics.get("ci", {})
    out = {}
    for k in keys:
        v = metrics.get(k)
        if not isinstance(v, int | float):
            continue
        c = ci.get(k) if isinstance(ci, dict) else None
        out[k] = fmt_ci({**(c if isinstance(c, dict) else {}), "value": v}, 4)
    return out


def print_table(title: str, rows: dict[str, dict[str, float | str]], first: str = "split") -> None:
    """A rich table, as wide as its content needs: values are never cut at 80 columns (pipes, CI logs)."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    table = Table(title=title)
    table.add_column(first, no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right", no_wrap=True)
    for name, r in rows.items():
        table.add_row(name, *[(fmt(r[c], 4) if isinstance(r.get(c), float) else str(r.get(c, ""))) for c in cols])
    console = Console()
    need = Measurement.get(console, console.options.update(width=10_000), table).maximum
    if need > console.width:
        console = Console(width=need)
    console.print(table)


def metadata_option(raw: str | None) -> dict[str, Any] | None:
    """The --metadata option: a JSON object, or None when not given."""
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"--metadata must be a JSON object such as '{{\"age\": 40}}': {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"--metadata must be a JSON object, got {type(obj).__name__}")
    return obj
