"""``medcls models | datasets``: what can be trained, on what."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import MedclsError


def models(pattern: Annotated[str, typer.Argument(help="Glob over timm model names, e.g. '*resnet*'.")] = "*") -> None:
    """List the timm architectures medcls can train (any timm name works)."""
    from ..models.factory import match_models

    names = match_models(pattern)
    if not names:
        raise MedclsError(f"no timm model matches {pattern!r}; try a wider glob such as '*{pattern.strip('*')[:3]}*'")
    for n in names:
        typer.echo(n)
    typer.echo(f"{len(names)} models", err=True)


def datasets() -> None:
    """List data source kinds and the built-in MedMNIST datasets."""
    from ..data.sources import SOURCES
    from ..data.sources.medmnist_info import INFO

    typer.echo("Source kinds (data.source: 'kind:argument'):")
    for name, doc in SOURCES.items():
        typer.echo(f"  {name:<10} {doc}")
    typer.echo("\nMedMNIST datasets (data.source: medmnist:<name>, data.options.size: 28|64|128|224):")
    for flag, info in INFO.items():
        n = info["n_samples"]
        typer.echo(f"  {flag:<15} {info['task']:<10} {len(info['labels']):>2} classes  {info['channels']} ch  "
                   f"{n['train']}/{n['val']}/{n['test']}  {info.get('license', '')}")


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.command()(datasets)
