"""`medcls validate`: the figures table and the folder it writes; a class mismatch, a wrong label map and a bad
--option are one `error:` line and exit status 2."""

from __future__ import annotations

import json

from medcls.cli.main import main

SOURCE = "medmnist:pneumoniamnist"


def test_validate_prints_external_internal_and_difference(evaluated_run, pneumonia_npz, tmp_path, capsys):
    args = ["validate", str(evaluated_run.path), SOURCE, "-O", f"path={pneumonia_npz}", "--split", "test",
            "--n-bootstrap", "50", "--output-dir", str(tmp_path), "--name", "cli"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    for text in ("external (95% CI)", "internal (95% CI)", "external − internal", "calibration-in-the-large",
                 "calibration slope", "O/E", "ICI"):
        assert text in out
    assert f"written to {tmp_path / 'validate-cli'}" in out and "warning: sample size" in err
    assert json.loads((tmp_path / "validate-cli" / "metrics.json").read_text())["n"] == 624
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: ") and (tmp_path / "validate-cli").is_dir()


def test_mismatched_classes_are_one_error_line(evaluated_run, pneumonia_npz, tmp_path, capsys):
    code = main(["validate", str(evaluated_run.path), SOURCE, "-O", f"path={pneumonia_npz}",
                 "-O", "labels=[normal, covid]", "--split", "test", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "'covid' that the model lacks" in err and "--label-map" in err
    assert not list(tmp_path.iterdir())


def test_label_map_and_option_errors(evaluated_run, pneumonia_npz, tmp_path, capsys):
    bad = tmp_path / "map.yaml"
    bad.write_text("covid: pneumonia\n")
    assert main(["validate", str(evaluated_run.path), SOURCE, "-O", f"path={pneumonia_npz}",
                 "--label-map", str(bad), "--output-dir", str(tmp_path)]) == 2
    assert "--label-map names label(s) 'covid' that medmnist:pneumoniamnist does not have" in capsys.readouterr().err
    assert main(["validate", str(evaluated_run.path), SOURCE, "-O", "path"]) == 2
    assert "--option expects KEY=VALUE" in capsys.readouterr().err
    assert main(["validate", str(evaluated_run.path), SOURCE, "-O", "path=[x"]) == 2  # not YAML: the string
    assert capsys.readouterr().err == "error: MedMNIST file not found: [x\n"
    assert main(["validate", str(evaluated_run.path), SOURCE, "--recalibrate", "platt"]) == 2
    assert "--recalibrate must be one of intercept, logistic, temperature" in capsys.readouterr().err


def test_a_site_column_the_source_lacks_is_one_line_before_any_image_is_read(evaluated_run, pneumonia_npz,
                                                                            monkeypatch, capsys):
    import medcls.validation.core as core

    def observe(*a, **k):
        raise AssertionError("images read before the site column was checked")

    monkeypatch.setattr(core, "observe", observe)
    assert main(["validate", str(evaluated_run.path), SOURCE, "-O", f"path={pneumonia_npz}",
                 "--site-column", "centre"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --site-column 'centre': medmnist:pneumoniamnist has no such column") and \
        "Columns: none" in err
