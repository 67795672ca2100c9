"""``medcls config show``: the configuration a training would use, autos resolved, without training."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ConfigFile, DataDir, Sets, overrides

config_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect configurations.")


@config_app.command("show")
def show(
    config: ConfigFile = None,
    sets: Sets = None,
    data_dir: DataDir = None,
    no_data: Annotated[bool, typer.Option("--no-data", help="Do not load the dataset: `auto` values stay auto.")] = False,
) -> None:
    """Print the resolved config as YAML (what `medcls train` with the same options would use)."""
    import yaml

    from ..config import load_config

    cfg = load_config(config, overrides(sets, data_dir))
    chosen: dict = {}
    if not no_data:
        cfg, chosen = _resolve(cfg)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
    if no_data:
        typer.echo("# --no-data: values set to auto are resolved per dataset when training")
        return
    if chosen:
        typer.echo("# auto values resolved for this dataset: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    typer.echo("# resolved when training starts: train.amp (by device), data.cache (by memory)")


def _resolve(cfg):
    """The autos a training resolves before it starts: per dataset (medcls.defaults), stem and input size."""
    from ..artefact import ModelSpec
    from ..data.sources import load_data
    from ..defaults import resolve_auto

    data = load_data(cfg.data)
    cfg, chosen = resolve_auto(cfg, data)
    spec = ModelSpec.for_config(cfg, data.spec)
    for key, value in (("model.stem", spec.stem), ("transforms.image_size", spec.preprocess.size),
                       ("model.in_chans", spec.in_chans)):
        section, field = key.split(".")
        if getattr(getattr(cfg, section), field) != value:
            chosen[key] = value
            cfg = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update={field: value})})
    return cfg, chosen
