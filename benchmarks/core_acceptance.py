"""Acceptance figures of the core pipeline (issue 2), measured through the real CLI.

    python benchmarks/core_acceptance.py [--datasets ../shared/datasets]

1. `headstart train hymenoptera` with an empty feature cache (cold) and again (warm):
   wall time of the whole command and validation accuracy (targets: >= 0.94, cold < 90 s,
   warm < 10 s on 2 cores).
2. safari: train on the first 10 images per class (sorted by name), `headstart evaluate`
   on all the others (target >= 0.95).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parser, safari_split


def cli(*args: str, env: dict[str, str]) -> tuple[dict, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "headstart", *map(str, args), "--json"],
                       capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"failed: headstart {' '.join(map(str, args))}\n{r.stderr}")
    return json.loads(r.stdout), wall


def main() -> None:
    ap = parser(__doc__)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "HEADSTART_CACHE": str(tmp / "cache")}
        hym = a.datasets / "hymenoptera"
        cold, t_cold = cli("train", hym, "--out", tmp / "m", env=env)
        warm, t_warm = cli("train", hym, "--out", tmp / "m", env=env)
        print(f"hymenoptera: val accuracy {cold['val_accuracy']:.4f} "
              f"({cold['val_images']} images, head {cold['head']}); "
              f"cold {t_cold:.1f} s, warm {t_warm:.1f} s "
              f"(warm computed {warm['features_computed']} features)")

        train_csv, test_csv = safari_split(a.datasets, tmp)
        cli("train", train_csv, "--out", tmp / "safari", env=env)
        m, t_eval = cli("evaluate", tmp / "safari", test_csv, env=env)
        print(f"safari (10 per class): accuracy {m['accuracy']:.4f} on {m['n_images']} "
              f"images, evaluate {t_eval:.1f} s")


if __name__ == "__main__":
    main()
