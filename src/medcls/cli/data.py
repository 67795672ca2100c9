"""``medcls data ...``: look at a dataset before training on it (check, split, stain-reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Inspect and prepare data: leakage check, group splits, stain reference.")


@data_app.command("stain-reference")
def stain_reference(
    image: Annotated[Path, typer.Argument(help="Reference H&E patch (PNG, JPEG, TIFF ...), well covered by tissue.")],
    method: Annotated[str, typer.Option(help="macenko | reinhard")] = "macenko",
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON to write (never overwritten).")] = Path("stain.json"),
    preview: Annotated[Path | None, typer.Option(help="Also write a before/after PNG (reference and --example images).")] = None,
    example: Annotated[list[Path] | None, typer.Option(help="Image to show normalised in the preview (repeatable).")] = None,
) -> None:
    """Fit Macenko/Reinhard stain normalisation on a reference patch; use with transforms.stain_reference=JSON."""
    import numpy as np

    from ..data.images import read_image
    from ..errors import ConfigError
    from ..transforms.stain import FITTED, StainNormalizer, preview_png, reference_document
    from ..utils import atomic_write_bytes, atomic_write_json, check_new_output

    if method not in FITTED:
        from ..errors import did_you_mean

        raise ConfigError(f"--method must be {' or '.join(FITTED)}, got {method!r}.{did_you_mean(method, FITTED)}")
    for out in (output, preview):
        if out is not None:
            check_new_output(out, "stain references", hint="choose another path")
    img = read_image(image)
    doc = reference_document(img, method, name=image.name, data=image.read_bytes())
    atomic_write_json(output, doc)
    if preview is not None:
        norm = StainNormalizer(method, doc["params"])
        shown = [np.asarray(img)[..., :3] if np.ndim(img) == 3 else img] + [read_image(p) for p in example or []]
        atomic_write_bytes(preview, preview_png([(im, norm(im)) for im in shown]))
    p = doc["params"]
    detail = (f"stain matrix (H, E columns) {p['stain_matrix']}, max concentrations {p['max_concentration']}"
              if method == "macenko" else f"LAB mean {p['lab_mean']}, std {p['lab_std']}")
    typer.echo(f"{method} reference from {image} ({doc['reference']['tissue_fraction']:.0%} tissue): {detail}")
    typer.echo(f"written {output}" + (f" and {preview}" if preview else "")
               + f"; train with --set transforms.stain={method} --set transforms.stain_reference={output}")


@data_app.command("fetch")
def fetch(
    dataset: Annotated[str, typer.Argument(help="MedMNIST name, e.g. pneumoniamnist (see `medcls datasets`).")] = "pneumoniamnist",
    size: Annotated[int, typer.Option(help="Image size: 28 | 64 | 128 | 224.")] = 28,
    data_dir: Annotated[Path, typer.Option(help="Folder to look in and download to.")] = Path("data"),
) -> None:
    """Find a MedMNIST file locally or download it from the official record (MD5-checked); print its path."""
    from ..data.sources.medmnist import locate_or_download

    typer.echo(f"{dataset}: {locate_or_download(dataset, size, data_dir)}")


def _guess_source(source: str) -> str:
    """``kind:argument`` as given; a bare path becomes btxrd (dataset.xlsx + images/), folder or csv."""
    from ..data.sources import SOURCES

    kind, sep, _ = source.partition(":")
    if sep and kind in SOURCES:
        return source
    p = Path(source).expanduser()
    if p.is_dir():
        return f"btxrd:{p}" if (p / "dataset.xlsx").is_file() and (p / "images").is_dir() else f"folder:{p}"
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".xlsx", ".xls"):
        return f"csv:{p}"
    return source  # parse_source explains the expected form


@data_app.command("split")
def split(
    source: Annotated[str, typer.Argument(help="kind:argument (folder:DIR, csv:FILE, btxrd:DIR, dicom:DIR ...) or a path.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write: id,split,label,group.")] = Path("splits.csv"),
    by: Annotated[str, typer.Option(help="patient | none | center")] = "patient",
    val: Annotated[float, typer.Option(help="Fraction of all samples for validation.")] = 0.1,
    test: Annotated[float, typer.Option(help="Fraction of all samples for test.")] = 0.2,
    stratify: Annotated[bool, typer.Option("--stratify/--no-stratify", help="Balance classes across splits.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    patient_col: Annotated[str | None, typer.Option(help="Patient id column (csv group column, BTXRD metadata, DICOM PatientID).")] = None,
    patient_regex: Annotated[str | None, typer.Option(help="Regex on file names; its first (...) group is the patient id. Default: person(\\d+)_ when the source has no ids.")] = None,
    test_centers: Annotated[str | None, typer.Option(help="--by center: comma-separated test centres (default: all but the first).")] = None,
    center_col: Annotated[str, typer.Option(help="--by center: metadata column naming the centre.")] = "center",
    keep_test: Annotated[bool, typer.Option("--keep-test", help="Keep the source's own test split; re-split the rest into train/val.")] = False,
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="Source option KEY=VALUE (YAML value), e.g. -O label_col=finding (repeatable).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where datasets are looked up (medmnist).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.")] = False,
) -> None:
    """Patient-grouped, stratified train/val/test split -> splits.csv; train with --set data.splits_file=splits.csv."""
    from rich.console import Console
    from rich.table import Table

    from ..config import parse_override
    from ..data.resplit import split_source
    from ..utils import atomic_write_text, check_new_output

    if not force:
        check_new_output(output, None, hint="pass --force to overwrite it or choose another -o")
    options = {}
    for item in option or []:
        key, value = parse_override(item)
        options[".".join(key)] = value
    centers = [c.strip() for c in test_centers.split(",") if c.strip()] if test_centers else None
    df, notes = split_source(_guess_source(source), options=options, by=by, val=val, test=test, stratify=stratify,
                             seed=seed, patient_col=patient_col, patient_regex=patient_regex, center_col=center_col,
                             test_centers=centers, keep_test=keep_test, data_dir=data_dir)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    classes = list(dict.fromkeys(df["label"]))
    table = Table(title=f"{output} ({len(df)} samples, by {by})")
    for col in ("split", *classes, "total", "groups"):
        table.add_column(col, justify="right")
    for s in ("train", "val", "test"):
        part = df[df["split"] == s]
        counts = part["label"].value_counts()
        n_groups = part["group"].nunique() if (df["group"] != "").any() else "-"
        table.add_row(s, *(str(int(counts.get(c, 0))) for c in classes), str(len(part)), str(n_groups))
    Console().print(table)
    atomic_write_text(output, df.to_csv(index=False))
    typer.echo(f"written {output}; train on it with --set data.source={_guess_source(source)} "
               f"--set data.splits_file={output}")


@data_app.command("check")
def check(
    source: Annotated[str, typer.Argument(help="kind:argument as in configs (medmnist:pneumoniamnist, folder:DIR, csv:FILE, hdf5:DIR ...) or a path.")],
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="Source option KEY=VALUE (YAML value), e.g. -O path=pneumoniamnist.npz (repeatable).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where datasets are looked up (then $MEDCLS_DATA_DIR, then ./data).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report directory to create (must not exist). Default: data-check/<dataset>-<time>.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 when leakage is found (the report is written first).")] = False,
    max_images: Annotated[int | None, typer.Option(min=1, help="Decode at most N images, sampled evenly within each split.")] = None,
    max_distance: Annotated[int, typer.Option(min=0, max=16, help="Near duplicates: phash Hamming distance at most this (of 64 bits).")] = 6,
    min_correlation: Annotated[float, typer.Option(min=0.01, max=1.0, help="Near duplicates: 32x32 thumbnail correlation at least this.")] = 0.99,
    workers: Annotated[int | None, typer.Option(min=1, help="Threads decoding image files (default: up to 4).")] = None,
) -> int:
    """Data report (report.json + report.html): counts, image formats, unreadable files, duplicates and patients shared across splits."""
    from ..data.check import check_data, parse_options
    from ..reports.data_check import check_new, print_summary, write_data_check

    check_new(output)
    report = check_data(_guess_source(source), options=parse_options(option), data_dir=data_dir,
                        max_images=max_images, max_distance=max_distance, min_correlation=min_correlation,
                        workers=workers)
    out = write_data_check(report, output)
    print_summary(report, out)
    if strict and report.leakage:  # exit 1 = leakage; 2 = a user error (bad source, option or path)
        typer.echo(f"error: leakage between splits (--strict): {'; '.join(report.leakage_reasons)}", err=True)
        return 1
    return 0
