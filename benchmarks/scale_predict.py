"""Streaming predict at scale (issue 18): images/s and peak memory of whole `headstart
predict --csv` processes over N procedurally generated JPEGs (no data download).

    python benchmarks/scale_predict.py [--sizes 400 10000 100000] [--work DIR]

Images: 224x224 JPEGs (quality 85) of random gradients, circles and rectangles, drawn with
a seeded generator, kept in --work between runs (generated once per size, nested 1,000 a
folder). Model: a head trained on the shipped safari examples (lite0).

With --ray N: the same N images through `--cluster local --workers 1` and `--workers 2`
beside local streaming (whole processes, Ray's start-up included), and each of the three
again on 16 images: their difference is the throughput once started (the fixed start-up
cost, mostly Ray's own processes, taken out).

For each size: one `headstart predict MODEL FOLDER --csv out.csv` process; wall seconds,
images/s, the peak resident memory of the process (ru_maxrss of the child) and the rows of
the CSV (must equal N). The throughput ratio to the smallest size and the peak ratio to
the 10,000-image run are the acceptance figures.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common import parser

REPO = Path(__file__).resolve().parents[1]


def generate(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` synthetic JPEGs under ``folder`` (1,000 a sub-folder); kept if already there."""
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, 224)[:, None, None]
        img = Image.fromarray((a * (1 - t) + b * t).repeat(224, 1).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x, y, r = rng.integers(0, 224, 2).tolist() + [int(rng.integers(10, 60))]
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            else:
                draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        img.save(sub / f"{i:07d}.jpg", quality=85)
    done.write_text(str(n))
    return folder


MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "sys.stderr.write('PEAK %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN)"
           ".ru_maxrss); sys.exit(r.returncode)")


def run(model: Path, folder: Path, out: Path, env: dict[str, str], *extra: str
        ) -> dict[str, float]:
    """One whole predict process, measured by a wrapper process of its own (its children's
    peak resident memory is exactly this run's)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "headstart",
                           "predict", str(model), str(folder), "--csv", str(out), "--json",
                           *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    peak_kib = int(done.stderr.rsplit("PEAK ", 1)[1].split()[0])
    with out.open(newline="") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    return {"seconds": wall, "rows": rows, "written": json.loads(done.stdout)["written"],
            "peak_mb": peak_kib / 1024}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 10000, 100000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/headstart-scale"))
    ap.add_argument("--ray", type=int, default=0, metavar="N",
                    help="also predict N images on a local Ray cluster with 1 and 2 workers "
                    "(needs the [ray] extra), beside local streaming on the same images")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HEADSTART_CACHE": str(args.work / "cache")}
    model = args.work / "model"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "headstart", "train",
                        str(REPO / "examples" / "safari" / "train"), "--out", str(model)],
                       check=True, capture_output=True, env=env)
    results = {}
    for n in sorted(args.sizes):
        folder = generate(args.work / f"images-{n}", n)
        results[n] = r = run(model, folder, args.work / f"out-{n}.csv", env)
        print(f"{n:>8} images: {r['seconds']:7.1f} s, {n / r['seconds']:6.1f} images/s, "
              f"peak RSS {r['peak_mb']:6.0f} MB, {r['rows']} rows", flush=True)
    small, big = min(results), max(results)
    print(f"throughput {big} vs {small}: "
          f"{(big / results[big]['seconds']) / (small / results[small]['seconds']):.2f}x")
    if 10000 in results and big != 10000:
        print(f"peak RSS {big} vs 10000: "
              f"{results[big]['peak_mb'] / results[10000]['peak_mb']:.2f}x")
    if args.ray:
        folder = generate(args.work / f"images-{args.ray}", args.ray)
        tiny = generate(args.work / "images-16", 16)
        local = run(model, folder, args.work / "ray-local.csv", env)
        local0 = run(model, tiny, args.work / "ray-local-16.csv", env)
        for workers in (1, 2):
            how = ("--cluster", "local", "--workers", str(workers))
            r = run(model, folder, args.work / f"ray-{workers}.csv", env, *how)
            r0 = run(model, tiny, args.work / f"ray-{workers}-16.csv", env, *how)
            started = (local["seconds"] - local0["seconds"]) / (r["seconds"] - r0["seconds"])
            print(f"ray, {workers} worker(s), {args.ray} images: {r['seconds']:.1f} s "
                  f"(local streaming {local['seconds']:.1f} s): throughput "
                  f"{local['seconds'] / r['seconds']:.2f}x of local, whole processes, Ray "
                  f"start-up included; {r['rows']} rows; on 16 images {r0['seconds']:.1f} s "
                  f"(local {local0['seconds']:.1f} s), so once started "
                  f"{started:.2f}x of local", flush=True)


if __name__ == "__main__":
    main()
