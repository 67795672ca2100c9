"""``medcls data ...``: look at a dataset before training on it (check, split, stain-reference)."""

from __future__ import annotations

import typer

data_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Inspect and prepare data: leakage check, group splits, stain reference.")
