"""``medcls validate``: external validation of a run or bundle on a labelled source it never saw."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import Checkpoint, DataDir, Device, print_table


def _ci(d: dict[str, Any] | None) -> str:
    from ..reports.kit import fmt_ci

    return fmt_ci(d, 3) if isinstance(d, dict) else ""


def figure_rows(m: dict[str, Any]) -> dict[str, dict[str, str]]:
    """One row per figure: external, internal and their difference, each with its 95% CI."""
    from ..reports.validation import figure_keys, figure_label

    ext, inside, diff = m["external"]["figures"], (m.get("internal") or {}).get("figures") or {}, m.get("difference")
    rows = {}
    for k in figure_keys(ext):
        label = figure_label(k)
        row = {"external (95% CI)": _ci(ext.get(k))}
        if inside:
            d = (diff or {}).get(k) or {}
            row["internal (95% CI)"] = _ci(inside.get(k))
            row["external − internal"] = _ci({"value": d.get("diff"), "low": d.get("low"), "high": d.get("high")})
        rows[label] = row
    return rows


def recalibration_rows(r: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Before and after the recalibration on the held-out cases, and the change (the same resamples)."""
    from ..reports.validation import figure_keys, figure_label

    rows = {}
    for k in figure_keys(r["before"]):
        c = r["change"].get(k) or {}
        rows[figure_label(k)] = {"before (95% CI)": _ci(r["before"].get(k)), "after (95% CI)": _ci(r["after"].get(k)),
                       "after − before": _ci({"value": c.get("diff"), "low": c.get("low"), "high": c.get("high")})}
    return rows


def validate(
    model: Annotated[Path, typer.Argument(help="A run directory (`medcls train`) or a bundle (`medcls export`).")],
    source: Annotated[str, typer.Argument(help="A labelled data source the model never saw: folder:, csv:, dicom:, hdf5:, medmnist:, btxrd: ...")],
    label_map: Annotated[Path | None, typer.Option(help="YAML: site label -> model class (several to one; null drops a label).")] = None,
    site_column: Annotated[str | None, typer.Option(help="Metadata column naming each case's site: figures per site and their heterogeneity.")] = None,
    split: Annotated[str, typer.Option(help="all | train | val | test: the source's splits to use.")] = "all",
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="A source option key=value (repeatable), e.g. -O path=site_b.npz.")] = None,
    recalibrate: Annotated[str | None, typer.Option(help="intercept | logistic | temperature: fitted on --fit-fraction of the cases, reported on the rest.")] = None,
    fit_fraction: Annotated[float, typer.Option(help="Share of the cases (per class, drawn with --seed) the recalibration is fitted on.")] = 0.5,
    internal: Annotated[Path | None, typer.Option(help="The run's own test evaluation (default RUN/eval-test) to compare with.")] = None,
    name: Annotated[str | None, typer.Option(help="Output folder validate-NAME (default: the source's name).")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Where validate-NAME/ goes (default: the run directory, or here for a bundle).")] = None,
    n_bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the resamples and of the recalibration split.")] = 0,
    checkpoint: Checkpoint = "best",
    backend: Annotated[str, typer.Option(help="auto | torch | onnx | int8")] = "auto",
    device: Device = "auto",
    data_dir: DataDir = None,
    num_workers: Annotated[int, typer.Option(min=0, help="Processes decoding images.")] = 0,
) -> None:
    """External validation: discrimination, calibration, case mix and shift on a labelled source, beside the internal test figures."""
    from .. import api
    from ..data.sources import parse_options

    v = api.validate(model, source, label_map=label_map, site_column=site_column, split=split,
                     options=parse_options(option), data_dir=data_dir, checkpoint=checkpoint, backend=backend,
                     device=device, n_bootstrap=n_bootstrap, seed=seed, recalibrate=recalibrate,
                     fit_fraction=fit_fraction, internal=internal, name=name, out_dir=output_dir)
    m = v.metrics
    counts = ", ".join(f"{n} {c}" for c, n in m["per_class"].items())
    print_table(f"{model} on {source} (n={m['n']}: {counts})", figure_rows(m), first="figure")
    if "recalibration" in m:
        r = m["recalibration"]
        print_table(f"{r['method']} recalibration fitted on {r['fitted_on']['n']} cases ({r['fitted_on']['fraction']:.0%}, "
                    f"seed {r['fitted_on']['seed']}); held out {r['held_out']['n']}", recalibration_rows(r),
                    first="held-out figure")
        for note in r.get("notes", []):
            typer.echo(f"note: {note}", err=True)
    for line in m["warnings"]:
        typer.echo(f"warning: {line}", err=True)
    for note in m["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"external validation written to {v.out}")


def register(app: typer.Typer) -> None:
    app.command()(validate)
