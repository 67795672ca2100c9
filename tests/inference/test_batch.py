"""Streaming prediction over archives (``medcls.api.predict_archive``): the Predictor's numbers, shards and a
manifest, resume without recomputing, another job's folder refused, list files, HDF5 sources, Parquet, and
bad input refused before the model loads."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcls import Predictor
from medcls.api import predict_archive
from medcls.errors import ConfigError, DataError, MedclsError, RunError
from medcls.inference.archive import ShardPlan, job_differences
from medcls.inference.batch import read_list, resolve_inputs


@pytest.fixture(scope="module")
def folder(tmp_path_factory, pneumonia_arrays) -> Path:
    """21 test images in two nested folders and one truncated PNG."""
    root = tmp_path_factory.mktemp("archive")
    for i in range(21):
        d = root / "p1" / "s1" if i < 12 else root / "p2"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pneumonia_arrays["test_images"][i]).save(d / f"img{i:03d}.png")
    (root / "p1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def _files(folder: Path) -> list[str]:
    return [str(p) for p in sorted(p for p in folder.rglob("*.png"))]


def _run(bundle, inputs, out=None, **kw):
    return predict_archive(bundle[0], inputs, output=out, shard_size=kw.pop("shard_size", 5), batch_size=4,
                           num_workers=kw.pop("num_workers", 0), **kw)


def test_the_stream_gives_the_predictors_results(bundle, folder):
    got: list[dict] = []
    errors: list[str] = []
    s = _run(bundle, [folder], on_results=got.extend, on_error=errors.append, num_workers=2, backend="torch")
    want = Predictor.load(bundle[0]).predict(_files(folder), on_error="skip")
    assert (s.predicted, s.errors) == (21, 1) and len(errors) == 1 and "broken.png" in errors[0]
    # the same dicts: probabilities, decision, OOD (to the last bits, which the model's thread count moves)
    assert_same_results(got, [r for r in want if "error" not in r])


def test_shards_manifest_and_final_files(bundle, folder, tmp_path):
    out = tmp_path / "out"
    s = _run(bundle, [folder], out)
    assert (s.shards, s.shards_written, s.predicted, s.errors) == (5, 5, 21, 1)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"part-{k:05d}.csv" for k in range(5)]
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["final"] == "predictions.csv" and m["job"]["shard_size"] == 5
    assert m["job"]["inputs"]["count"] == 22 and m["job"]["source"]["kind"] == "bundle"
    assert sum(c["rows"] for c in m["shards"].values()) == 21 and sum(c["errors"] for c in m["shards"].values()) == 1
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(df.columns) == ["file", "prob_normal", "prob_pneumonia", "predicted", "ood", "ood_score"]
    want = [r for r in Predictor.load(bundle[0]).predict(_files(folder), on_error="skip") if "error" not in r]
    assert list(df["file"]) == [r["file"] for r in want]
    # the shards' batches (cut at shard bounds) differ from predict()'s: float32 sums may differ in the last bit
    assert df["prob_pneumonia"].tolist() == pytest.approx([r["probabilities"]["pneumonia"] for r in want], abs=1e-6)
    assert list(df["ood"]) == [("flagged" if r["ood"]["flagged"] else "ok") for r in want]
    err = pd.read_csv(out / "errors.csv")
    assert list(err.columns) == ["file", "message"] and err["file"].tolist() == [str(folder / "p1" / "broken.png")]
    assert not err["message"][0].startswith(str(folder))


def test_a_rerun_resumes_and_a_finished_job_is_left_alone(bundle, folder, tmp_path):
    out = tmp_path / "out"
    _run(bundle, [folder], out)
    final = (out / "predictions.csv").read_bytes()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    (out / "shards" / "part-00003.csv").unlink()  # as if killed before that shard was written
    (out / "predictions.csv").unlink()
    (out / "shards" / ".part-00003.csv.x1.tmp").write_text("half a shard")
    s = _run(bundle, [folder], out)
    assert (s.shards_skipped, s.shards_written) == (4, 1) and not s.already_complete
    assert (out / "predictions.csv").read_bytes() == final
    assert {n: t for n, t in kept.items() if n != "part-00003.csv"} == \
        {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir() if p.name != "part-00003.csv"}
    assert not list((out / "shards").glob(".*.tmp"))
    again = _run(bundle, [folder], out)
    assert again.already_complete and again.shards_written == 0 and (again.predicted, again.errors) == (21, 1)


def test_another_job_in_the_folder_is_refused(bundle, folder, tmp_path):
    out = tmp_path / "out"
    _run(bundle, [folder / "p2"], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for kw, what in (({"inputs": [folder]}, "input list"), ({"shard_size": 3}, "shard size"),
                     ({"refuse_ood": True}, "settings")):
        with pytest.raises(RunError, match=f"another job \\(different {what}.*choose another --output"):
            _run(bundle, kw.pop("inputs", [folder / "p2"]), out, **kw)
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists and is not empty"):
        _run(bundle, [folder / "p2"], tmp_path / "other")
    assert job_differences({"job": {}}, {"job": {"inputs": 1}, "format_version": 1}) == ["input list"]


def test_list_file_relative_to_its_folder(bundle, folder, tmp_path):
    lst = folder / "p2" / "list.txt"
    lst.write_text("# scans of the day\nimg012.png\n\n../p1/s1/img000.png\nmissing.png\n")
    assert read_list(lst) == [str(folder / "p2" / "img012.png"), str(folder / "p2" / "../p1/s1/img000.png"),
                              str(folder / "p2" / "missing.png")]
    assert read_list("-", ["a.png\n", "/x/b.png\n"]) == ["a.png", "/x/b.png"]
    got: list[dict] = []
    errors: list[str] = []
    s = _run(bundle, [], list_file=lst, on_results=got.extend, on_error=errors.append)
    assert [r["file"] for r in got] == read_list(lst)[:2] and s.errors == 1 and "missing.png" in errors[0]


def test_an_hdf5_source_predicts_without_exporting_images(bundle, pneumonia_arrays, tmp_path):
    h5py = pytest.importorskip("h5py")
    x = pneumonia_arrays["test_images"][:13]
    with h5py.File(tmp_path / "patches.h5", "w") as f:
        f["x"], f["y"] = x, np.arange(13) % 2
    got: list[dict] = []
    s = _run(bundle, [f"hdf5:{tmp_path / 'patches.h5'}"], on_results=got.extend, num_workers=2)
    want = Predictor.load(bundle[0]).predict(list(x))
    assert s.predicted == 13 and [r["file"] for r in got] == [f"patches.h5[{i}]" for i in range(13)]
    for a, b in zip(got, want, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    with pytest.raises(DataError, match="no samples in split 'test'"):
        resolve_inputs([f"hdf5:{tmp_path / 'patches.h5'}"], split="test")


def test_parquet_holds_the_csv_rows(bundle, folder, tmp_path):
    pytest.importorskip("pyarrow")
    _run(bundle, [folder / "p2"], tmp_path / "csv")
    _run(bundle, [folder / "p2"], tmp_path / "pq", format="parquet")
    a = pd.read_csv(tmp_path / "csv" / "predictions.csv", keep_default_na=False)
    b = pd.read_parquet(tmp_path / "pq" / "predictions.parquet")
    assert b["prob_pneumonia"].dtype == np.float64 and b["ood_score"].dtype == np.float64
    pd.testing.assert_frame_equal(a, b)


def test_missing_pyarrow_names_the_extra(bundle, folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without the extra gives
    with pytest.raises(MedclsError, match=r"pip install 'medcls\[parquet\]'"):
        _run(bundle, [folder], tmp_path / "o", format="parquet")


@pytest.mark.parametrize("inputs,kw,err", [
    (["nowhere/x.png"], {}, "image not found: nowhere/x.png (no such file or directory)"),
    (["pcam:/data"], {}, "'pcam' is not a source kind"),
    ([], {}, "no inputs"),
    (["{folder}"], {"format": "xml"}, "--format must be one of csv, parquet"),
    (["{folder}"], {"shard_size": 0}, "--shard-size must be at least 1"),
    (["{folder}"], {"split": "dev"}, "--split must be one of"),
])
def test_bad_input_is_one_line_before_the_model_loads(folder, tmp_path, monkeypatch, inputs, kw, err):
    monkeypatch.setattr(Predictor, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "empty").mkdir()
    with pytest.raises((DataError, ConfigError)) as e:
        predict_archive(tmp_path / "no-model", [i.format(folder=folder) for i in inputs], output=tmp_path / "o", **kw)
    assert err in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="no image files in this directory"):
        resolve_inputs([tmp_path / "empty"])
    assert not (tmp_path / "o").exists()


def test_the_output_must_be_a_folder(bundle, folder, tmp_path):
    (tmp_path / "o.csv").write_text("x")
    with pytest.raises(RunError, match="is a file; give a folder"):
        _run(bundle, [folder], tmp_path / "o.csv")


def test_shard_plan():
    plan = ShardPlan(23, 5)
    assert plan.count == 5 and plan.bounds(4) == (20, 23) and plan.rows(4) == 3 and plan.shard_of(19) == 3
    assert plan.of_rank(0, 2) == [0, 2, 4] and plan.of_rank(1, 2) == [1, 3]
    assert os.path.basename(str(resolve_inputs([Path(__file__)]).ids[0])) == "test_batch.py"


def assert_same_results(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        floats = ("probabilities", "ood")
        assert {k: v for k, v in a.items() if k not in floats} == {k: v for k, v in b.items() if k not in floats}
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
        assert {**a["ood"], "score": 0} == {**b["ood"], "score": 0}
        assert a["ood"]["score"] == pytest.approx(b["ood"]["score"], rel=1e-5)


def test_auto_runs_a_bundle_on_onnx_runtime_on_the_cpu_and_a_run_on_torch(bundle, evaluated_run, folder):
    got: list[dict] = []
    _run(bundle, [folder], on_results=got.extend)
    assert {r["model"]["backend"] for r in got} == {"onnx"}
    want = Predictor.load(bundle[0], backend="onnx").predict(_files(folder), on_error="skip")
    assert_same_results(got, [r for r in want if "error" not in r])
    runs: list[dict] = []
    _run((evaluated_run.path,), [folder], on_results=runs.extend)
    assert {r["model"]["backend"] for r in runs} == {"torch"}
