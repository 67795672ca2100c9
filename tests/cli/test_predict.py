"""`medcls predict`: directories expand to their images; an unreadable file is reported, the rest predicted;
`medcls calibrate`; result tables are not cut at 80 columns."""

from __future__ import annotations

import json

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
    code = main(["predict", str(run_dir), str(folder), str(tmp_path / "missing.png"), "--csv", str(tmp_path / "o.csv")])
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
