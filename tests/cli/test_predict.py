"""`medcls predict`: directories expand to their images; an unreadable file is reported, the rest predicted;
archives to an output folder (resumed after kill -9, shared by torchrun ranks); `medcls calibrate`; result
tables are not cut at 80 columns."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from medcls.cli.main import main


def _images(folder, arrays, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(arrays["test_images"][i]).save(folder / f"case{i}.png")
    return folder


def test_a_directory_expands_to_its_images(trained, pneumonia_arrays, tmp_path, capsys):
    run_dir, _ = trained
    folder = _images(tmp_path / "xrays" / "batch1", pneumonia_arrays)
    (tmp_path / "xrays" / "README.txt").write_text("not an image, not listed")
    assert main(["predict", str(run_dir), str(tmp_path / "xrays")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] == "file" and len(lines) == 4
    assert [ln.split("\t")[0] for ln in lines[1:]] == [str(folder / f"case{i}.png") for i in range(3)]


def test_one_unreadable_file_does_not_stop_the_rest(trained, pneumonia_arrays, tmp_path, capsys):
    run_dir, _ = trained
    folder = _images(tmp_path / "mixed", pneumonia_arrays, n=2)
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "list.txt").write_text("missing.png\n")  # a list's missing entry is an error row (an argument: exit 2)
    code = main(["predict", str(run_dir), str(folder), "--list", str(tmp_path / "list.txt"),
                 "--csv", str(tmp_path / "o.csv")])
    captured = capsys.readouterr()
    assert code == 2
    rows = [ln.split("\t") for ln in captured.out.splitlines()]
    assert sum(1 for r in rows if r[-2:] in (["normal", "n/a"], ["pneumonia", "n/a"])) == 2  # a run: no gate
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert "broken.png" in errors[0] + errors[1] and "missing.png" in errors[0] + errors[1]
    assert "object at 0x" not in captured.err
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 3


def test_a_directory_without_images(trained, tmp_path, capsys):
    run_dir, _ = trained
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run_dir), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no image files" in err


def test_calibrate_refits_a_checkpoint_and_says_what_on(trained, capsys):
    run_dir, _ = trained
    assert main(["calibrate", str(run_dir), "--checkpoint", "last"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("calibrated last (epoch 2) on val (n=128): T = ") and "postprocess.json" in out
    store = json.loads((run_dir / "postprocess.json").read_text())
    assert store["last"]["checkpoint"]["name"] == "last" and store["last"]["fitted_on"] == "val"


def test_tables_are_not_cut_at_80_columns(trained, monkeypatch, capsys):
    run_dir, _ = trained
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["evaluate", str(run_dir), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "sensitivity" in out and "specificity" in out


@pytest.fixture(scope="module")
def archive(tmp_path_factory, pneumonia_arrays) -> Path:
    """300 test images in patient folders, as a PACS export lays them out."""
    root = tmp_path_factory.mktemp("pacs")
    for i in range(300):
        d = root / f"patient{i // 50:02d}" / "study1"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pneumonia_arrays["test_images"][i]).save(d / f"img{i:03d}.png")
    return root


def _predict(*args: str) -> list[str]:
    return [sys.executable, "-m", "medcls", "predict", *args]


def test_output_folder_errors_and_exit_status(trained, archive, tmp_path, capsys):
    run_dir, _ = trained
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["predict", str(run_dir), str(archive / "patient00"), str(tmp_path / "broken.png"), "-o", str(out),
                 "--shard-size", "16", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines() == [f"error: {tmp_path / 'broken.png'}: cannot decode image: not a PNG, "
                                                 "JPEG, TIFF, BMP, GIF, WebP or DICOM file"]
    assert "50 predictions in" in captured.out and "1 errors in" in captured.out
    assert len((out / "predictions.csv").read_text().splitlines()) == 51
    assert (out / "errors.csv").read_text().splitlines()[1].startswith(f"{tmp_path / 'broken.png'},")
    assert main(["predict", str(run_dir), str(archive / "patient00"), str(tmp_path / "broken.png"), "-o", str(out),
                 "--shard-size", "16"]) == 2
    assert "is complete already" in capsys.readouterr().out


@pytest.mark.parametrize("args,err", [
    (["{archive}/nope"], "nope (no such file or directory)"),
    (["medmnsit:pneumoniamnist"], "'medmnsit' is not a source kind"),
    (["{archive}", "--format", "xlsx"], "--format must be one of csv, parquet"),
    (["{archive}", "--shard-size", "0"], "--shard-size must be at least 1"),
    (["{archive}", "--csv", "x.csv"], "--csv is for the stdout table"),
    ([], "give images, folders, a data source"),
])
def test_bad_arguments_are_one_line(trained, archive, tmp_path, capsys, args, err):
    code = main(["predict", str(trained[0]), *[a.format(archive=archive) for a in args], "-o", str(tmp_path / "o")])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and err in lines[0] and not (tmp_path / "o").exists()


def test_kill_9_then_resume_gives_the_uninterrupted_file(trained, archive, tmp_path, capsys):
    run_dir, _ = trained
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    args = [str(run_dir), *(str(archive / f"patient{i:02d}") for i in range(3)), "--batch-size", "1",
            "--num-workers", "0", "--shard-size", "5"]
    assert main(["predict", *args, "-o", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    proc = subprocess.Popen(_predict(*args, "-o", str(out)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "shards").glob("part-*.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("part-*.csv")}
    assert 1 <= len(done) < 30 and not (out / "predictions.csv").exists()
    capsys.readouterr()
    assert main(["predict", *args, "-o", str(out)]) == 0
    assert f"{len(done)} of 30 shards were already done" in capsys.readouterr().out
    assert (out / "predictions.csv").read_bytes() == (tmp_path / "ref" / "predictions.csv").read_bytes()
    assert {n: (out / "shards" / n).stat().st_mtime_ns for n in done} == done  # not recomputed
    assert main(["predict", *args[:-1], "6", "-o", str(out)]) == 2  # another shard size: another job
    assert "another job (different shard size)" in capsys.readouterr().err


def test_ctrl_c_keeps_finished_shards_and_says_how_to_resume(trained, archive, tmp_path):
    run_dir, _ = trained
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = tmp_path / "out"
    proc = subprocess.Popen(_predict(str(run_dir), str(archive), "-o", str(out), "--shard-size", "10",
                                     "--batch-size", "1", "--num-workers", "1"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "shards").glob("part-*.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert (f"interrupted: the finished shards in {out} are kept; run the same command again to resume"
            in err.splitlines())
    assert list((out / "shards").glob("part-*.csv")) and not list((out / "shards").glob(".*.tmp"))


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_ranks_write_what_one_process_writes(trained, archive, tmp_path):
    run_dir, _ = trained
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    args = ["predict", str(run_dir), str(archive / "patient00"), "--shard-size", "8", "--num-workers", "0"]
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "medcls", *args, "-o",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two" / "predictions.csv").read_bytes() == (tmp_path / "one" / "predictions.csv").read_bytes()
    m = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert m["complete"] and len(m["shards"]) == 7 and sum(c["rows"] for c in m["shards"].values()) == 50
