"""The ``medcls`` app: command groups, ``--version``, and the CLI contract.

Every usage error, typer's/click's own included, is one line on stderr starting with
``error:`` and exit status 2; so is every :class:`~medcls.errors.MedclsError`.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer

# typer vendors click and exports none of its exceptions but BadParameter (pip's click has other classes)
from typer._click import exceptions as click_errors

from .. import __version__
from ..errors import MedclsError, did_you_mean
from ..logs import console_logging
from . import catalog, deploy, experiments, training, validate
from .config import config_app
from .data import data_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Medical image classification: train, calibrate, evaluate, explain, export, serve.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medcls {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the medcls version and exit.")] = False) -> None:
    """Medical image classification: train, calibrate, evaluate, explain, export, serve."""


training.register(app)
validate.register(app)
deploy.register(app)
catalog.register(app)
experiments.register(app)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

# Flags users bring from timm's train.py and Lightning, mapped to the config key that holds them.
FLAG_KEYS = {"--model": "model.name", "--arch": "model.name", "--epochs": "train.epochs", "--lr": "train.lr",
             "--batch-size": "train.batch_size", "-b": "train.batch_size", "--seed": "seed",
             "--img-size": "transforms.image_size", "--image-size": "transforms.image_size",
             "--pretrained": "model.pretrained", "--output": "output_dir", "--output-dir": "output_dir",
             "--max-epochs": "train.epochs", "--weight-decay": "train.weight_decay", "--opt": "train.optimizer",
             "--sched": "train.scheduler", "--amp": "train.amp", "--mixup": "train.mixup", "--cutmix": "train.cutmix",
             "--drop": "model.drop_rate", "--workers": "data.num_workers", "--num-workers": "data.num_workers"}


def _config_key(option: str) -> str | None:
    """The config key an unknown option most likely means (``--warmup-epochs`` -> ``train.warmup_epochs``)."""
    if option in FLAG_KEYS:
        return FLAG_KEYS[option]
    from ..config import Config

    field = option.lstrip("-").replace("-", "_")
    for section, info in Config.model_fields.items():
        sub = getattr(info.annotation, "model_fields", None)
        if sub and field in sub:
            return f"{section}.{field}"
    return None


def _option_value(option: str, argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
        if a == option and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            return argv[i + 1]
    return "VALUE"


def _usage_line(e: click_errors.UsageError, argv: list[str]) -> str:
    """One line for a click/typer usage error, with a did-you-mean or the --set that was meant."""
    ctx, msg = e.ctx, " ".join(e.format_message().split())
    where = ctx.command_path if ctx is not None else "medcls"
    if isinstance(e, click_errors.NoSuchOption):
        key = _config_key(e.option_name)
        if key:
            return (f"no such option {e.option_name} for `{where}`; set config values with "
                    f"--set {key}={_option_value(e.option_name, argv)}")
        close = did_you_mean(e.option_name, e.possibilities or [])
        return f"no such option {e.option_name} for `{where}`.{close} See `{where} --help`."
    if isinstance(e, click_errors.MissingParameter) and e.param is not None:
        p, help_ = e.param, getattr(e.param, "help", None)
        label = " / ".join(o for o in getattr(p, "opts", []) if o.startswith("-")) or str(p.name).upper()
        kind = "option" if label.startswith("-") else "argument"
        return f"missing {kind} {label}" + (f" ({help_.rstrip('.')})" if help_ else "") + f"; see `{where} --help`"
    if msg.startswith("No such command") and ctx is not None and hasattr(ctx.command, "commands"):
        name = msg.split("'")[1] if "'" in msg else ""
        names = sorted(ctx.command.commands)
        return f"no such command {name!r} for `{where}`.{did_you_mean(name, names)} Commands: {', '.join(names)}."
    return f"{msg}{_from_environment(e)} (see `{where} --help`)"


def _from_environment(e: click_errors.UsageError) -> str:
    """Where a bad value came from when it was an environment variable (``MEDCLS_SERVE_PORT``), not a flag."""
    param, ctx = getattr(e, "param", None), e.ctx
    if param is None or ctx is None or param.name is None:
        return ""
    source = ctx.get_parameter_source(param.name)
    if source is None or source.name != "ENVIRONMENT":
        return ""
    name = param.envvar if isinstance(param.envvar, str) else f"{ctx.auto_envvar_prefix}_{param.name.upper()}"
    return f" (from the environment: {name}={os.environ.get(name, '')!r})"


OS_HINTS = {errno.ENOSPC: "free some space, or write elsewhere with --set output_dir=... or -o",
            errno.EDQUOT: "free some space, or write elsewhere with --set output_dir=... or -o",
            errno.ENAMETOOLONG: "use a shorter name: at most 255 bytes per file or folder name",
            errno.EACCES: "check the permissions, or write elsewhere", errno.EPERM: "check the permissions",
            errno.EROFS: "that file system is read-only: write elsewhere",
            errno.EISDIR: "a directory was given where a file is expected",
            errno.ENOTDIR: "a file was given where a directory is expected"}


def _os_error_line(e: OSError) -> str:
    """One line for a failed read or write: what failed, on which file, and what to do."""
    line = e.strerror or str(e)
    if e.filename:
        line += f": {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    hint = OS_HINTS.get(e.errno)
    return line + (f"; {hint}" if hint else "")


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors become one clear line on stderr and exit status 2."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    console_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = app(args=args, standalone_mode=False, prog_name="medcls")
    except MedclsError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except click_errors.NoArgsIsHelpError:
        return 0  # a bare group name: its help was printed
    except click_errors.UsageError as e:
        typer.echo(f"error: {_usage_line(e, args)}", err=True)
        return 2
    except click_errors.ClickException as e:
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        return 130
    except OSError as e:  # disk full, name too long, permissions ...: nothing half-written is left as valid
        typer.echo(f"error: {_os_error_line(e)}", err=True)
        return 2
    except FloatingPointError as e:  # training diverged (not a usage error)
        typer.echo(f"error: {e}", err=True)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
