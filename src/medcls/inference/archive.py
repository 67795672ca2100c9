"""An archive's predictions in an output folder that survives interruptions and splits over torchrun ranks.

Layout of ``DIR``::

    manifest.json            the job (input list hash, model, settings) and the finished shards
    shards/part-00000.csv    inputs [0, S), S = the shard size: every row, errors included (column ``error``)
    predictions.csv|.parquet the good rows of every shard, in input order (once all shards are done)
    errors.csv               file, message of each input that could not be predicted

A shard file is written whole (temp file + rename) once its last row is predicted, so after Ctrl-C, kill -9
or an out-of-memory kill every shard file present is complete; the same command again predicts only the
shards that are missing. Shard ``k`` belongs to rank ``k % world`` under torchrun; rank 0 owns the manifest
and writes the final files when every shard is there. Modelled on Lightning's ``BasePredictionWriter``
(``write_interval="batch"``) and MONAI's ``SaveImage``: results leave the process as they are made.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..artefact import open_artefact
from ..engine.distributed import DistInfo, broadcast_object
from ..errors import ConfigError, MedclsError, RunError
from ..utils import atomic_write_json, atomic_write_text, atomic_writer, check_new_output, file_sha256
from .batch import Inputs, batch_ranges, columns, error_line, error_message, stream, table_row
from .predictor import Predictor

MANIFEST = "manifest.json"
SHARDS = "shards"
ERRORS = "errors.csv"
FORMATS = {"csv": "predictions.csv", "parquet": "predictions.parquet"}
MANIFEST_VERSION = 1
DEFAULT_SHARD_SIZE = 10_000


@dataclass(frozen=True)
class ShardPlan:
    """``n`` inputs cut into shards of ``size`` consecutive inputs (the last one may be shorter)."""

    n: int
    size: int

    @property
    def count(self) -> int:
        return -(-self.n // self.size)

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.size, min((k + 1) * self.size, self.n)

    def rows(self, k: int) -> int:
        lo, hi = self.bounds(k)
        return hi - lo

    def shard_of(self, i: int) -> int:
        return i // self.size

    def of_rank(self, rank: int, world: int) -> list[int]:
        return list(range(rank, self.count, world))


@dataclass
class ArchiveSummary:
    """What a job did: inputs, rows predicted and failed (in this process's shards, or all of them once the
    final files are written), shards found finished and shards written now."""

    inputs: int
    predicted: int = 0
    errors: int = 0
    shards: int = 0
    shards_skipped: int = 0
    shards_written: int = 0
    output: Path | None = None
    final: Path | None = None
    errors_file: Path | None = None
    already_complete: bool = False
    error_lines: list[str] = field(default_factory=list)


def check_options(fmt: str, shard_size: int) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    if fmt == "parquet":
        from ..extras import require

        require("pyarrow", "--format parquet")


def shard_name(k: int) -> str:
    return f"part-{k:05d}.csv"


def shard_path(out: Path, k: int) -> Path:
    return out / SHARDS / shard_name(k)


# ------------------------------------------------------------------------------------------------ manifest
def source_identity(path: str | Path, checkpoint: str, backend: str) -> dict[str, Any]:
    """The model a job predicts with, without loading it: a bundle by its bundle.json digest (which covers
    every file), a run by its checkpoint's sha256 and its postprocess.json (calibration, operating point)."""
    art = open_artefact(path)
    name = art.checkpoint_name(checkpoint)
    if art.kind == "bundle":
        digest = (art.info.get("integrity") or {}).get("sha256") or file_sha256(art.path / "bundle.json")
    else:
        weights, post = art.weights_path(name), art.path / "postprocess.json"
        parts = [file_sha256(weights) if weights.is_file() else "none", file_sha256(post) if post.is_file() else "none"]
        digest = hashlib.sha256(":".join(parts).encode()).hexdigest()
    return {"kind": art.kind, "checkpoint": name, "backend": backend, "sha256": digest}


def new_manifest(inputs: Inputs, shard_size: int, source: dict[str, Any], source_path: str | Path, fmt: str, *,
                 refuse_ood: bool, metadata: dict[str, Any] | None, batch_size: int,
                 model_threads: str = "one per worker") -> dict[str, Any]:
    """The manifest of a new job. Its ``job`` part is what a resumed run must match; the batch size and the
    model's threads (one per decoding worker, or all of them without workers) are part of it because float32
    sums may differ in the last bit with either, and a resumed job's file must be byte for byte the one an
    uninterrupted run writes."""
    job = {"inputs": {"count": len(inputs), "sha256": inputs.digest()}, "shard_size": shard_size, "source": source,
           "format": fmt, "settings": {"refuse_ood": refuse_ood, "metadata": metadata, "batch_size": batch_size,
                                       "model_threads": model_threads}}
    return {"format_version": MANIFEST_VERSION, "medcls_version": __version__, "job": job,
            "source_path": str(Path(source_path).resolve()), "final": FORMATS[fmt], "errors": ERRORS,
            "shards": {}, "complete": False}


JOB_PARTS = {"inputs": "input list", "shard_size": "shard size", "source": "model", "format": "format",
             "settings": "settings (--refuse-ood, --metadata, --batch-size, --num-workers 0 or not)"}


def job_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two manifests' jobs (empty: the same job)."""
    a, b = old.get("job") or {}, new["job"]
    return [what for key, what in JOB_PARTS.items() if a.get(key) != b.get(key)] or \
        (["manifest version"] if old.get("format_version") != new["format_version"] else [])


def read_manifest(out: Path) -> dict[str, Any] | None:
    p = out / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{p} is unreadable ({e}); choose another --output") from None


def open_output(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest of ``out``: the one there when it is the same job, else a new folder. A folder holding
    another job, or files that are not a job's, is refused (never overwritten)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--output {out} is a file; give a folder (created when missing)")
    old = read_manifest(out)
    if old is None:
        check_new_output(out, "predictions", hint="choose another --output, or an empty folder", empty_dir_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / MANIFEST, manifest)
        return manifest
    if diff := job_differences(old, manifest):
        raise RunError(f"{out} holds the predictions of another job (different {', '.join(diff)}); choose another "
                       "--output (finished predictions are never overwritten)")
    for tmp in [*(out / SHARDS).glob(".part-*.tmp"), *out.glob(".*.tmp")]:  # what a killed write left
        tmp.unlink(missing_ok=True)
    return {**old, "source_path": manifest["source_path"]}


def open_output_on_all_ranks(out: Path, manifest: dict[str, Any], dist: DistInfo) -> dict[str, Any]:
    """:func:`open_output` on rank 0; every rank gets its manifest or raises its one-line refusal."""
    verdict: Any = None
    if dist.is_main:
        try:
            verdict = open_output(out, manifest)
        except MedclsError as e:
            verdict = str(e)
    verdict = broadcast_object(verdict, dist)
    if isinstance(verdict, str):
        raise RunError(verdict)
    return verdict


def with_shard(manifest: dict[str, Any], k: int, counts: dict[str, int]) -> dict[str, Any]:
    return {**manifest, "shards": {**manifest["shards"], shard_name(k): counts}}


# ------------------------------------------------------------------------------------------------ shards
def csv_text(rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def shard_row(r: dict[str, Any], width: int) -> list[str]:
    """A result as a shard row: the table row and an empty error, or the file, empty cells and the error."""
    if "error" in r:
        return [r["file"], *[""] * (width - 2), error_message(r)]
    return [*table_row(r), ""]


def counts(rows: Sequence[Sequence[str]]) -> dict[str, int]:
    errors = sum(1 for r in rows if r[-1])
    return {"rows": len(rows) - errors, "errors": errors}


def predict_shards(predictor: Predictor, inputs: Inputs, plan: ShardPlan, out: Path, todo: Sequence[int], *,
                   batch_size: int, num_workers: int, metadata: dict[str, Any] | None = None,
                   bar: Any = None, report: Callable[[str], None] | None = None
                   ) -> Iterator[tuple[int, dict[str, int]]]:
    """Predict shards ``todo``; yields ``(k, counts)`` as each shard file is in place. ``report`` gets a
    ``<file>: <message>`` line for each input that cannot be predicted, as it comes."""
    header = [*columns(predictor.spec.class_names), "error"]
    batches = [b for k in todo for b in batch_ranges(*plan.bounds(k), batch_size)]
    rows: list[list[str]] = []
    for idx, results in stream(predictor, inputs, batches, num_workers=num_workers, metadata=metadata):
        rows += [shard_row(r, len(header)) for r in results]
        for r in results:
            if "error" in r and report is not None:
                report(error_line(r))
        if bar is not None:
            bar.update(len(idx))
        k = plan.shard_of(idx[0])
        if len(rows) == plan.rows(k):
            atomic_write_text(shard_path(out, k), csv_text([header, *rows]))
            yield k, counts(rows)
            rows = []


def wait_for_shards(out: Path, plan: ShardPlan, poll: float = 0.5) -> None:
    """Rank 0: until every shard file is there (torchrun ends every rank when one fails)."""
    while any(not shard_path(out, k).is_file() for k in range(plan.count)):
        time.sleep(poll)


# ------------------------------------------------------------------------------------------------ final files
def read_shard(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    f = path.open(encoding="utf-8", newline="")
    reader = csv.reader(f)
    header = next(reader)

    def rows() -> Iterator[list[str]]:
        with f:
            yield from reader

    return header, rows()


class CsvSink:
    def __init__(self, f, header: list[str]) -> None:
        self.w = csv.writer(f, lineterminator="\n")
        self.w.writerow(header)

    def write(self, rows: list[list[str]]) -> None:
        self.w.writerows(rows)

    def close(self) -> None:
        pass


class ParquetSink:
    """Rows of text (as the shards hold them) -> one Parquet row group each call: strings, and float64 for the
    probabilities and the OOD score (empty = null)."""

    def __init__(self, f, header: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.header = pa, header
        self.floats = {c for c in header if c.startswith("prob_") or c == "ood_score"}
        self.schema = pa.schema([(c, pa.float64() if c in self.floats else pa.string()) for c in header])
        self.w = pq.ParquetWriter(f, self.schema)

    def write(self, rows: list[list[str]]) -> None:
        if not rows:
            return
        cols = {c: [r[j] for r in rows] for j, c in enumerate(self.header)}
        cols = {c: [float(v) if v else None for v in vs] if c in self.floats else vs for c, vs in cols.items()}
        self.w.write_table(self.pa.table(cols, schema=self.schema))

    def close(self) -> None:
        self.w.close()


def merge(out: Path, plan: ShardPlan, fmt: str) -> dict[str, dict[str, int]]:
    """Write the final predictions file and errors.csv from the shards, in input order, a shard at a time;
    returns the counts of every shard."""
    found: dict[str, dict[str, int]] = {}
    with atomic_writer(out / FORMATS[fmt], binary=fmt == "parquet") as pf, atomic_writer(out / ERRORS) as ef:
        sink = None
        errors = csv.writer(ef, lineterminator="\n")
        errors.writerow(["file", "message"])
        for k in range(plan.count):
            header, rows = read_shard(shard_path(out, k))
            if sink is None:
                sink = (ParquetSink if fmt == "parquet" else CsvSink)(pf, header[:-1])
            good, bad = [], []
            for r in rows:
                (bad if r[-1] else good).append(r)
            sink.write([r[:-1] for r in good])
            errors.writerows([[r[0], r[-1]] for r in bad])
            found[shard_name(k)] = {"rows": len(good), "errors": len(bad)}
        if sink is not None:
            sink.close()
    return found
