"""Data path at the users' scale (issue 15): full-size JPEG folders and an HDF5 set larger than the caches.

(a) A Kaggle-chest_xray-like folder (ROOT/train/{NORMAL,PNEUMONIA}/*.jpeg, 8-bit gray JPEGs of WxH) at
    the model size: medcls (memory cache, disk cache, uncached) vs torchvision ImageFolder + DataLoader
    (workers = cores) vs MONAI CacheDataset; first and second epoch data throughput (images/s of float
    batches (B, 3, S, S) ready for the model, no model), peak RSS, cache bytes.
(b) PCam at real size (synthetic HDF5 in the real layout, 96x96x3): `medcls train` from the disk cache;
    peak RSS and the share of each epoch spent waiting for data.
(c) Images/s per core of the uncached data path, and the cores that keep a GPU training ResNet-50 at 224
    px (~3,000 img/s) fed.

Each pipeline runs in its own process (peak RSS is per process). Run alone on an idle machine:

    python benchmarks/data_scale.py --work /tmp/data_scale              # (a) + (c), 2,000 JPEGs 1024x870
    python benchmarks/data_scale.py --work /tmp/data_scale --pcam 262144 --pcam-epochs 2   # + (b)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 64
GPU_IMG_S = 3000  # a GPU training ResNet-50 at 224 px (A100-class, AMP), the figure


def cores() -> int:
    return len(os.sched_getaffinity(0))


class AnonPeak:
    """Peak of this process's anonymous resident memory (``RssAnon``: what cannot be dropped and re-read from a
    file), sampled every 0.2 s; ru_maxrss alone also counts file pages a process maps."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.2)


def peak_rss_mb(anon: AnonPeak | None = None) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rss_mb": round(own, 1), "worker_rss_mb": round(kids, 1),
            **({"anon_rss_mb": round(anon.peak_kb / 1024, 1)} if anon is not None else {})}


# ----------------------------------------------------------------- fixtures in the real layouts
def xray_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth chest-radiograph-like picture (lungs darker than mediastinum, ribs, film grain)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2 + rng.normal(0, w / 40)
    img = 170 - 70 * np.exp(-(((xx - cx + w / 5) / (w / 7)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2))
    img -= 70 * np.exp(-(((xx - cx - w / 5) / (w / 7)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2))
    img += 18 * np.sin(yy / (h / 22) + rng.uniform(0, 6)) * (np.abs(xx - cx) > w / 10)
    img += rng.normal(0, 3, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, n: int, w: int, h: int) -> Path:
    from PIL import Image

    done = root / f".complete-{n}-{w}x{h}"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = "PNEUMONIA" if i % 4 else "NORMAL"  # Kaggle's train split is ~3:1
        d = root / "train" / cls
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xray_like(rng, h, w)).save(d / f"person{i}_{cls.lower()}.jpeg", quality=90)
    done.touch()
    return root


def make_pcam(root: Path, n: int) -> Path:
    """camelyonpatch_level_2_split_{train,valid}_{x,y}.h5 with x (N, 96, 96, 3) uint8, y (N, 1, 1, 1) uint8."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bank = rng.integers(0, 255, (512, 96, 96, 3), dtype=np.uint8)
    bank = (bank // 4 + np.array([180, 120, 170], np.uint8) * 3 // 4).astype(np.uint8)  # H&E-like pinks
    for split, count in (("train", n), ("valid", max(1024, n // 8)), ("test", max(1024, n // 8))):
        x_path = root / f"camelyonpatch_level_2_split_{split}_x.h5"
        if x_path.exists() and h5py.File(x_path, "r")["x"].shape[0] == count:
            continue
        with h5py.File(x_path, "w") as f:
            ds = f.create_dataset("x", (count, 96, 96, 3), dtype=np.uint8, chunks=(64, 96, 96, 3))
            for lo in range(0, count, 4096):
                k = min(4096, count - lo)
                ds[lo : lo + k] = np.roll(bank[rng.integers(0, 512, k)], rng.integers(0, 96), axis=2)
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=(np.arange(count) % 2).astype(np.uint8).reshape(count, 1, 1, 1))
    return root


# ----------------------------------------------------------------- (a) pipelines, one per process
def epochs(batches_of, n: int) -> dict[str, float]:
    out = {}
    for e in (1, 2):
        t0 = time.perf_counter()
        seen = sum(len(x) for x in batches_of(e))
        assert seen == n, (seen, n)
        out[f"epoch{e}_img_s"] = round(n / (time.perf_counter() - t0), 1)
    return out


def run_torchvision(root: Path, size: int) -> dict:
    import torch
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(root / "train", transform=transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor()]))
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=cores())
    return {**epochs(lambda e: (x for x, _ in loader), len(ds)), "cache_bytes": 0}


def run_monai(root: Path, size: int) -> dict:
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityRanged

    files = [{"image": str(p), "label": int("PNEUMONIA" in p.parent.name)}
             for p in sorted((root / "train").rglob("*.jpeg"))]
    tf = Compose([LoadImaged("image", image_only=True, reader="PILReader"), EnsureChannelFirstd("image"),
                  Resized("image", (size, size)), ScaleIntensityRanged("image", 0, 255, 0, 1)])
    state: dict = {}

    def batches(e):
        if e == 1:
            state["ds"] = CacheDataset(files, tf, cache_rate=1.0, num_workers=cores(), progress=False)
            state["loader"] = DataLoader(state["ds"], batch_size=BATCH, shuffle=True, num_workers=0)
        return (b["image"].expand(-1, 3, -1, -1) for b in state["loader"])  # gray -> the model's 3 channels

    out = epochs(batches, len(files))
    cached = state["ds"]._cache
    out["cache_bytes"] = int(sum(torch.as_tensor(c["image"]).nbytes for c in cached))
    return out


def run_medcls(root: Path, size: int, mode: str) -> dict:
    from medcls.data.sources.folder import folder_source
    from medcls.engine.loader import Batches
    from medcls.transforms import Preprocess, PreprocessConfig

    t0 = time.perf_counter()
    table = folder_source(str(root)).splits["train"]
    scan_s = time.perf_counter() - t0
    pre = Preprocess(PreprocessConfig(size=size, in_chans=3))
    state: dict = {}
    tmp = tempfile.TemporaryDirectory(prefix="medcls-bench-cache-")  # removed when the process ends

    def batches(e):
        if e == 1:
            state["b"] = Batches(table, pre, batch_size=BATCH, cache=mode, num_workers="auto", cache_dir=tmp.name)
        order = np.random.default_rng(e).permutation(len(table))
        return (x for x, _, _ in state["b"].iterate(order))

    out = epochs(batches, len(table))
    t0 = time.perf_counter()  # a third epoch as a GPU machine runs it: stored uint8 batches, finished on the device
    n = sum(len(x) for x, _ in state["b"].stored_batches(np.random.default_rng(3).permutation(len(table))))
    out["stored_img_s"] = round(n / (time.perf_counter() - t0), 1)
    c = state["b"].cache
    out.update({"scan_s": round(scan_s, 2), "cache_bytes": 0 if c is None else int(c.nbytes),
                "workers": state["b"].num_workers})
    return out


# ----------------------------------------------------------------- (b) PCam from the disk cache
def run_pcam(root: Path, n_epochs: int, model: str, out_dir: Path) -> dict:
    from medcls import train

    seen = []
    cfg = {"name": "pcam-scale", "seed": 0, "output_dir": str(out_dir),
           "data": {"source": f"hdf5:{root}", "cache": "disk", "cache_dir": str(out_dir / "cache"),
                    "leakage_check": "off"},
           "model": {"name": model, "pretrained": False},
           "transforms": {"preset": "histology", "image_size": 96},
           "train": {"epochs": n_epochs, "batch_size": 256, "progress": False, "ema": False}}
    t0 = time.perf_counter()
    train(cfg, run_dir=out_dir / "run",
          callbacks=[lambda t, e, row: seen.append({k: row.get(k) for k in ("train_seconds", "data_seconds",
                                                                             "train_img_per_s")})])
    return {"epochs": seen, "total_s": round(time.perf_counter() - t0, 1),
            "cache_gb": round(sum(p.stat().st_size for p in (out_dir / "cache").glob("*.npy")) / 2**30, 2)}


def child(args) -> None:
    import torch

    torch.set_num_threads(cores())
    anon = AnonPeak()
    root = Path(args.root)
    if args.pipeline == "torchvision":
        out = run_torchvision(root, args.size)
    elif args.pipeline == "monai":
        out = run_monai(root, args.size)
    elif args.pipeline == "pcam":
        out = run_pcam(root, args.pcam_epochs, args.pcam_model, Path(args.out))
    else:
        out = run_medcls(root, args.size, args.pipeline.split("-", 1)[1])
    print(json.dumps({**out, **peak_rss_mb(anon)}))


def spawn(pipeline: str, root: Path, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--_child", pipeline, "--root", str(root), "--size", str(args.size),
           *[f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{pipeline} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512 BF16 + VNNI" if "avx512_bf16" in flags and "avx512_vnni" in flags else "AVX2 only (no AVX-512 BF16/VNNI)"
    return f"{cores()} cores, {isa}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/data_scale", help="where the synthetic datasets go (kept for reruns)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=870)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--pipelines", nargs="*", default=["torchvision", "monai", "medcls-memory", "medcls-disk",
                                                       "medcls-off"])
    ap.add_argument("--pcam", type=int, default=0, help="PCam train patches for (b) (real size: 262144; 0 skips)")
    ap.add_argument("--pcam-epochs", type=int, default=2)
    ap.add_argument("--pcam-model", default="mobilenetv3_small_050")
    ap.add_argument("--_child", dest="pipeline")
    ap.add_argument("--root")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.pipeline:
        return child(args)
    work = Path(args.work)
    print(f"machine: {machine()}")
    if args.pipelines:
        root = make_folder(work / "chest_xray", args.images, args.width, args.height)
        rows = {p: spawn(p, root, args) for p in args.pipelines}
        report_folder(rows, args)
    if args.pcam:
        root = make_pcam(work / "pcam", args.pcam)
        out = Path(tempfile.mkdtemp(prefix="pcam-run-", dir=work))
        r = spawn("pcam", root, args, pcam_epochs=args.pcam_epochs, pcam_model=args.pcam_model, out=out)
        print(json.dumps(r, indent=1))
        for i, e in enumerate(r["epochs"], 1):
            print(f"PCam epoch {i}: {e['train_seconds']:.0f} s, {e['train_img_per_s']:.0f} img/s, waiting for data "
                  f"{e['data_seconds']:.1f} s = {100 * e['data_seconds'] / e['train_seconds']:.1f}% of the epoch")
        print(f"PCam peak RSS {r['rss_mb'] / 1024:.2f} GB (of which anonymous {r['anon_rss_mb'] / 1024:.2f} GB; "
              f"workers {r['worker_rss_mb'] / 1024:.2f} GB), disk cache {r['cache_gb']} GB")


def report_folder(rows: dict, args) -> None:
    uint8_bytes = args.images * args.size * args.size  # gray, stored once
    print(f"\n(a) {args.images} JPEGs {args.width}x{args.height} -> {args.size} px, batch {BATCH}\n")
    print("| pipeline | first epoch img/s | second epoch img/s (float on CPU) | second epoch img/s (host batches "
          "for a GPU) | peak RSS MB (main / workers) | cache MB | cache / uint8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        ratio = f"{r['cache_bytes'] / uint8_bytes:.2f}" if r["cache_bytes"] else "-"
        stored = f"{r['stored_img_s']:.0f} (uint8)" if "stored_img_s" in r else f"{r['epoch2_img_s']:.0f} (float)"
        print(f"| {name} | {r['epoch1_img_s']:.0f} | {r['epoch2_img_s']:.0f} | {stored} | {r['rss_mb']:.0f} / "
              f"{r['worker_rss_mb']:.0f} | {r['cache_bytes'] / 2**20:.0f} | {ratio} |")
    tv = rows.get("torchvision")
    med = rows.get("medcls-memory")
    if tv and med:
        print(f"\nmedcls (memory cache) vs torchvision: first epoch {med['epoch1_img_s'] / tv['epoch1_img_s']:.2f}x "
              f"(target >= 1.5x), second {med['epoch2_img_s'] / tv['epoch2_img_s']:.0f}x as float batches on the CPU, "
              f"{med['stored_img_s'] / tv['epoch2_img_s']:.0f}x as the batches a GPU receives (target >= 50x); "
              f"folder scan {med['scan_s']} s")
    off = rows.get("medcls-off")
    if off:
        per_core = off["epoch1_img_s"] / max(1, off["workers"])
        print(f"(c) uncached data path: {off['epoch1_img_s']:.0f} img/s on {off['workers']} worker(s) = "
              f"{per_core:.0f} img/s per core; a GPU at {GPU_IMG_S} img/s needs about "
              f"{int(np.ceil(GPU_IMG_S / per_core))} cores decoding (or the cache: "
              f"{med['epoch2_img_s']:.0f} img/s from memory)" if med else "")


if __name__ == "__main__":
    main()
