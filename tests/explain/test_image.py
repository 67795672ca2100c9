"""`medcls explain`: one image's figure, its messages, and the raw map at the image's size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medcls.cli.main import main

from .conftest import one_thread


def test_explain_cli(tiny_run, pneumonia_arrays, tmp_path, capsys, restore_logging):
    img = tmp_path / "x.png"
    Image.fromarray(pneumonia_arrays["test_images"][0]).save(img)
    out = tmp_path / "cam.png"
    with one_thread():
        code = main(["explain", str(tiny_run.path), str(img), "--method", "gradcam++", "-o", str(out),
                     "--target-class", "pneumonia", "--layer", "net.layer3"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "predicted" in cap.out and "p = " in cap.out and str(out) in cap.out
    with Image.open(out) as im:
        im.load()
        assert im.size[0] > 2 * im.size[1]

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert main(["explain", str(tiny_run.path), str(bad), "-o", str(tmp_path / "b.png")]) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert main(["explain", str(tiny_run.path), str(img), "--method", "gradcm", "-o", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'gradcam'" in err.lower() and err.count("\n") == 1
    assert main(["explain", str(tiny_run.path), str(img), "--target-class", "pneumona", "-o", str(out)]) == 2
    assert "did you mean 'pneumonia'" in capsys.readouterr().err.lower()
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_explain_saves_the_raw_map_at_the_image_size(tiny_run, tmp_path, capsys, restore_logging):
    """`medcls explain RUN IMG -o out.png --array map.npy`: float32 in [0, 1], the image's own height x width."""
    img = tmp_path / "wide.png"
    Image.fromarray((np.arange(40 * 60) % 251).astype(np.uint8).reshape(40, 60)).save(img)
    with one_thread():
        code = main(["explain", str(tiny_run.path), str(img), "-o", str(tmp_path / "cam.png"),
                     "--array", str(tmp_path / "map.npy")])
    out = capsys.readouterr().out
    assert code == 0 and "net.layer1 (7x7 map)" in out and "map.npy" in out
    cam = np.load(tmp_path / "map.npy")
    assert cam.dtype == np.float32 and cam.shape == (40, 60) and cam.min() >= 0 and cam.max() <= 1
    assert cam.std() > 0
    assert main(["explain", str(tiny_run.path), str(img), "-o", str(tmp_path / "c.png"),
                 "--array", str(tmp_path / "map.txt")]) == 2
    assert "--array must name a .npy file" in capsys.readouterr().err
