"""`medcls predict -o` over an archive of full-size JPEGs (issue: predicting archives of any size).

A PACS-export-like tree ROOT/patientNNNNN/studyK/imgNNNNNN.jpg of N (default 100,000) 8-bit gray JPEGs
(chest-radiograph-like pictures, not noise). Encoding 100k full-size JPEGs would take hours and ~20 GB, so
``--distinct`` images (default 2,000) are encoded and the others are hard links to them (the output says so);
every file is still opened, read and decoded. The model is a small 28-px ResNet-18 bundle on PneumoniaMNIST
(``--bundle`` or ``--run`` to reuse one, else 1 epoch is trained and exported into WORK).

Measured, each in its own process:
  (a) images/s of a plain loop: PIL decode + resize to the model size + the same model, batch 64, one process,
      on the first ``--subset`` files;
  (b) images/s of `medcls predict -o` on the same subset and on all N;
  (c) peak RSS of the predict process (and with its workers) at 10k files and at N, and their ratios;
  (d) a run SIGKILLed after some shards, resumed, and its final file compared byte for byte with (b)'s.

Run alone on an idle machine (the lead runs the 100k one):

    python benchmarks/predict_scale.py --work /tmp/predict_scale                  # 100,000 files
    python benchmarks/predict_scale.py --work /tmp/predict_scale --files 2000     # a quick check
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import cpu_name

BATCH = 64


def cpu_features() -> str:
    """AVX-512 BF16 / VNNI / AMX, or AVX2 only, from /proc/cpuinfo's flags."""
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                         if ln.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    have = [f for f in ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags]
    return ", ".join(have) if have else ("AVX2 only" if "avx2" in flags else "no AVX2")


# ----------------------------------------------------------------- the archive
def xray_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth chest-radiograph-like picture (dark lungs, brighter mediastinum, ribs, grain)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = size / 2 + rng.normal(0, size / 40)
    img = 170 - 70 * np.exp(-(((xx - cx + size / 5) / (size / 7)) ** 2 + ((yy - size / 2) / (size / 3)) ** 2))
    img -= 70 * np.exp(-(((xx - cx - size / 5) / (size / 7)) ** 2 + ((yy - size / 2) / (size / 3)) ** 2))
    img += 18 * np.sin(yy / (size / 22) + rng.uniform(0, 6)) * (np.abs(xx - cx) > size / 10)
    img += rng.normal(0, 3, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def file_path(root: Path, i: int) -> Path:
    return root / f"patient{i // 20:05d}" / f"study{(i // 5) % 4}" / f"img{i:06d}.jpg"


def make_archive(root: Path, n: int, distinct: int, size: int) -> list[Path]:
    """N files, the first ``distinct`` encoded, the rest hard links to them (reused when complete)."""
    from PIL import Image

    files = [file_path(root, i) for i in range(n)]
    done = root / f".complete-{n}-{distinct}-{size}"
    if done.exists():
        return files
    rng = np.random.default_rng(0)
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        if f.exists():
            continue
        if i < distinct:
            Image.fromarray(xray_like(rng, size)).save(f, quality=90)
        else:
            os.link(files[i % distinct], f)
    done.touch()
    return files


def get_bundle(args, work: Path) -> Path:
    if args.bundle:
        return args.bundle
    out = work / "bundle"
    if (out / "bundle.json").is_file():
        return out
    run = args.run
    if run is None:
        from medcls import train

        run = work / "run"
        if not (run / "model.json").is_file():
            cfg = {"name": "predict-scale", "seed": 0, "output_dir": str(work),
                   "data": {"source": "medmnist:pneumoniamnist", "limit": 512},
                   "model": {"name": "resnet18", "pretrained": False},
                   "train": {"epochs": 1, "batch_size": 64, "progress": False}}
            train(cfg, run_dir=run)
    from medcls.export import export_bundle

    export_bundle(run, out)
    return out


# ----------------------------------------------------------------- measurements
def plain_loop(bundle: Path, files: list[Path]) -> float:
    """(a) images/s: PIL decode, resize to the model size, the same model, batch 64, in this process."""
    import torch
    from PIL import Image

    from medcls.artefact import open_artefact

    art = open_artefact(bundle)
    model, _ = art.build_model("best", "cpu")
    size, chans = art.spec.preprocess.size, art.spec.preprocess.in_chans
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(files), BATCH):
            xs = [torch.from_numpy(np.array(Image.open(f).convert("L").resize((size, size), Image.BILINEAR)))
                  for f in files[lo : lo + BATCH]]
            x = torch.stack(xs).float().div(255).unsqueeze(1).expand(-1, chans, -1, -1)
            model(x)
    return len(files) / (time.perf_counter() - t0)


def plain_loop_onnx(bundle: Path, files: list[Path]) -> float:
    """(a') the same plain loop with the bundle's ONNX graph (what `medcls predict` runs a bundle on, on a CPU)."""
    from PIL import Image

    from medcls.artefact import open_artefact
    from medcls.inference.ort import ort_logits, ort_session

    art = open_artefact(bundle)
    session = ort_session(bundle / "model.onnx")
    size, chans = art.spec.preprocess.size, art.spec.preprocess.in_chans
    t0 = time.perf_counter()
    for lo in range(0, len(files), BATCH):
        xs = [np.array(Image.open(f).convert("L").resize((size, size), Image.BILINEAR)) for f in files[lo : lo + BATCH]]
        x = np.repeat((np.stack(xs).astype(np.float32) / 255)[:, None], chans, axis=1)
        ort_logits(session, x)
    return len(files) / (time.perf_counter() - t0)


def _rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (the decoding workers), in kB (0 once it is gone)."""
    try:
        rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if ln.startswith("VmRSS:"))
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, StopIteration):
        return 0
    return rss + sum(_rss_kb(int(k)) for k in kids)


def run_predict(args: list[str], *, kill_after_shards: int | None = None, out: Path | None = None) -> dict:
    """`medcls predict` in its own process: wall seconds, the peak RSS of the main process (VmHWM) and of the
    main process with its workers (VmRSS summed, sampled every 50 ms until it exits); with ``kill_after_shards``,
    SIGKILLed once that many shard files exist."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "medcls", "predict", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = tree = 0
    while proc.poll() is None:
        try:
            for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if ln.startswith("VmHWM:"):
                    peak = max(peak, int(ln.split()[1]))
        except OSError:
            pass
        tree = max(tree, _rss_kb(proc.pid))
        if kill_after_shards and len(list((out / "shards").glob("part-*.csv"))) >= kill_after_shards:
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"medcls predict failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    return {"s": time.perf_counter() - t0, "rss_mb": peak / 1024, "tree_mb": tree / 1024, "stdout": stdout.strip()}


def list_file(work: Path, files: list[Path], name: str) -> Path:
    p = work / name
    p.write_text("".join(f"{f}\n" for f in files))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/predict_scale"))
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--distinct", type=int, default=2_000, help="JPEGs encoded; the others are hard links")
    ap.add_argument("--size", type=int, default=1024, help="JPEG side (pixels)")
    ap.add_argument("--subset", type=int, default=2_000, help="files for (a), (b)-subset and (d)")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--run", type=Path, default=None, help="run directory to export (default: train 1 epoch)")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = make_archive(work / "pacs", args.files, min(args.distinct, args.files), args.size)
    gen_s = time.perf_counter() - t0
    bundle = get_bundle(args, work)
    subset = files[: args.subset]
    sub_list = list_file(work, subset, "subset.txt")
    sub_shard = max(1, len(subset) // 10)
    plain = plain_loop(bundle, subset)
    plain_onnx = plain_loop_onnx(bundle, subset)
    for d in ("out-subset", "out-subset-torch", "out-10k", "out-all", "out-killed"):
        shutil.rmtree(work / d, ignore_errors=True)
    sub = run_predict([str(bundle), "--list", str(sub_list), "-o", str(work / "out-subset"),
                       "--shard-size", str(sub_shard)])
    sub_torch = run_predict([str(bundle), "--list", str(sub_list), "-o", str(work / "out-subset-torch"),
                             "--shard-size", str(sub_shard), "--backend", "torch"])
    ten = run_predict([str(bundle), "--list", str(list_file(work, files[:10_000], "10k.txt")),
                       "-o", str(work / "out-10k"), "--shard-size", str(args.shard_size)])
    full = run_predict([str(bundle), str(work / "pacs"), "-o", str(work / "out-all"),
                        "--shard-size", str(args.shard_size)])
    killed_args = [str(bundle), "--list", str(sub_list), "-o", str(work / "out-killed"), "--shard-size", str(sub_shard)]
    run_predict(killed_args, kill_after_shards=3, out=work / "out-killed")
    shards_before = len(list((work / "out-killed" / "shards").glob("part-*.csv")))
    resumed = run_predict(killed_args)
    same = filecmp.cmp(work / "out-killed" / "predictions.csv", work / "out-subset" / "predictions.csv",
                       shallow=False)
    assert same, "the resumed run's predictions.csv differs from the uninterrupted one"
    n_ten = min(10_000, len(files))
    from medcls.inference.batch import default_workers

    workers = default_workers()
    cmd = " ".join(["python", "benchmarks/predict_scale.py", *sys.argv[1:]])
    print(f"""
### predict_scale: {len(files):,} files ({args.size}x{args.size} gray JPEG, {min(args.distinct, len(files)):,} encoded,\
 the rest hard links; generated in {gen_s:.0f} s)

CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores; {cpu_features()}). Model: {bundle}. Command:
`{cmd}`

| measure | files | value |
|---|---:|---:|
| (a) plain loop: PIL decode + resize + torch model, batch {BATCH}, 1 process | {len(subset):,} | {plain:.0f} img/s (1.00x) |
| (a') the same plain loop on the bundle's ONNX graph | {len(subset):,} | {plain_onnx:.0f} img/s ({plain_onnx / plain:.2f}x) |
| (b) `medcls predict -o` (shard {sub_shard}; backend auto = ONNX) | {len(subset):,} | {len(subset) / sub['s']:.0f} img/s ({len(subset) / sub['s'] / plain:.2f}x; {sub['s']:.1f} s) |
| (b) `medcls predict -o --backend torch` (shard {sub_shard}) | {len(subset):,} | {len(subset) / sub_torch['s']:.0f} img/s ({len(subset) / sub_torch['s'] / plain:.2f}x; {sub_torch['s']:.1f} s) |
| (b) `medcls predict -o` (shard {args.shard_size:,}; backend auto = ONNX) | {len(files):,} | {len(files) / full['s']:.0f} img/s ({len(files) / full['s'] / plain:.2f}x; {full['s']:.1f} s) |
| (c) peak RSS: main process; with its {workers} workers | {n_ten:,} | {ten['rss_mb']:.0f} MB; {ten['tree_mb']:.0f} MB |
| (c) peak RSS: main process; with its {workers} workers | {len(files):,} | {full['rss_mb']:.0f} MB (x{full['rss_mb'] / ten['rss_mb']:.2f}); {full['tree_mb']:.0f} MB (x{full['tree_mb'] / ten['tree_mb']:.2f}) |
| (d) SIGKILL after {shards_before} of 10 shards, resumed | {len(subset):,} | predictions.csv byte-identical: {same} ({resumed['s']:.1f} s to finish) |

Wall times include the process start (imports, model load: about 5 s), which the larger runs amortise.
""")


if __name__ == "__main__":
    main()
