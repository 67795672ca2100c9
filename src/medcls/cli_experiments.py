"""Commands that run many trainings: ``medcls cv`` and ``medcls tune``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the experiment commands to the main app."""
    del app  # commands are added below as they are built
