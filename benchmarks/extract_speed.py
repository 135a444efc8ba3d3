"""End-to-end feature-extraction speed: plain timm + DataLoader vs headstart (issue 3).

    python benchmarks/extract_speed.py [--data ../shared/datasets/hymenoptera] [--int8]

All rows decode the same JPEG files and produce pooled backbone features, measured in this
run on this machine (ratios, not absolute times, are the figures to compare):

  a  timm eager PyTorch, torchvision transforms from timm's data config, a standard
     torch DataLoader (the better of num_workers 0 and 2), batch 32.
  b  headstart's default path (`Classifier.predict_images`: threaded decode with JPEG draft
     mode, the fastest engine, feature cache on but empty), export of the engine graph
     already cached, as on every run after the first on a machine.
  b' the same through the CLI: `headstart predict MODEL FOLDER` with an empty feature cache,
     process start-up included.
  c  b with `--int8` (when --int8 is given).

The CPU's FP32 peak is estimated as cores x base clock x FP32 lanes x 2 (FMA) x 2 (FMA units
per core), the lanes read from the CPU flags (AVX-512: 16, AVX2: 8); backbone FLOPs per
image are counted with torch's FlopCounterMode (one multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_peak_gflops() -> tuple[float, str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)]
    ghz = (max(mhz) / 1000) if mhz else 2.5
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if info else set()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = os.cpu_count() or 1
    peak = cores * ghz * lanes * 2 * 2
    return peak, (f"{cores} cores x {ghz:.2f} GHz x {lanes} FP32 lanes x 2 (FMA) x 2 FMA "
                  f"units = {peak:.0f} GFLOP/s")


def gflops_per_image(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def baseline(files: list[Path], workers: int) -> float:
    import timm
    from PIL import Image

    from headstart.backbone.build import load_backbone

    model = load_backbone().model
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> torch.Tensor:
            return transform(Image.open(files[i]).convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=32, num_workers=workers)
    t = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            model(x)
    return time.perf_counter() - t


def headstart_api(files: list[Path], model_dir: Path, cache: Path) -> tuple[float, str]:
    from headstart import Classifier

    clf = Classifier.load(model_dir, cache_dir=cache)
    t = time.perf_counter()
    pred = clf.predict_images(files)
    wall = time.perf_counter() - t
    assert len(pred.sources) == len(files)
    return wall, clf.engine_.name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2]
                    / "shared" / "datasets" / "hymenoptera")
    ap.add_argument("--int8", action="store_true")
    a = ap.parse_args()
    files = sorted(p for p in a.data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:400]
    n = len(files)
    peak, peak_note = cpu_peak_gflops()
    from headstart.backbone.build import load_backbone

    bb = load_backbone()
    gf = gflops_per_image(bb.model, bb.preprocess.size)
    print(f"{n} images from {a.data}; {gf:.2f} GFLOP per image; peak {peak_note}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "HEADSTART_CACHE": str(tmp / "cache")}
        def train(out: str, *flags: str) -> dict:
            r = subprocess.run([sys.executable, "-m", "headstart", "train", str(a.data),
                                "--out", str(tmp / out), "--head", "linear", "--json", *flags],
                               env=env, check=True, capture_output=True, text=True)
            shutil.rmtree(tmp / "cache" / "features")
            return json.loads(r.stdout)

        # models to predict with (this also exports and checks the engine graphs once)
        fast = train("m")
        slow = train("m_torch", "--runtime", "torch")
        print(f"hymenoptera val accuracy, head on {fast['runtime']} features "
              f"{fast['val_accuracy']:.4f}, on PyTorch features {slow['val_accuracy']:.4f}")
        if a.int8:
            q = train("m8", "--int8")["int8"]
            print(f"int8: val accuracy {q['val_accuracy_int8']:.4f} "
                  f"(FP32 {q['val_accuracy_fp32']:.4f})")
        t_a = min(baseline(files, w) for w in (0, 2))
        t_b, engine = headstart_api(files, tmp / "m", tmp / "cache")
        shutil.rmtree(tmp / "cache" / "features")
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "headstart", "predict", str(tmp / "m"),
                            str(a.data), "--json"], env=env, capture_output=True, text=True)
        t_cli = time.perf_counter() - t
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["predictions"]) >= n
        rows = [("a  timm eager + DataLoader", t_a), (f"b  headstart ({engine})", t_b),
                ("b' headstart predict CLI, cold cache", t_cli)]
        if a.int8:
            shutil.rmtree(tmp / "cache" / "features")
            t_c, engine8 = headstart_api(files, tmp / "m8", tmp / "cache")
            rows.append((f"c  headstart --int8 ({engine8})", t_c))
        for name, t in rows:
            ips = n / t
            print(f"{name:40s} {t:6.1f} s  {ips:6.1f} img/s  "
                  f"{ips * gf / peak:5.1%} of FP32 peak")
        print(f"ratio b/a = {t_a / t_b:.2f}   b'/a = {t_a / t_cli:.2f}"
              + (f"   c/a = {t_a / t_c:.2f}" if a.int8 else ""))


if __name__ == "__main__":
    main()
