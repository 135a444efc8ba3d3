"""Issue 7: `headstart check` on hymenoptera with a warm feature cache (target < 20 s),
against a baseline measured in the same run: decoding every image once with PIL, which is
the least any checker that opens the files must do.

    python benchmarks/check_speed.py [--datasets ../shared/datasets]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from PIL import Image

from common import parser


def main() -> None:
    args = parser(__doc__).parse_args()
    data = args.datasets / "hymenoptera"
    files = sorted(p for p in data.rglob("*") if p.is_file())
    t = time.perf_counter()
    for f in files:
        with Image.open(f) as img:
            img.convert("RGB")
    decode = time.perf_counter() - t
    env = {**os.environ, "HEADSTART_CACHE": tempfile.mkdtemp(prefix="hs-check-")}
    runs = []
    for what in ("cold cache", "warm cache"):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "headstart", "check", str(data), "--json"],
                           capture_output=True, text=True, env=env)
        runs.append(time.perf_counter() - t)
        h = json.loads(r.stdout)
        print(f"check {what}: {runs[-1]:.1f} s (exit {r.returncode}: {h['summary']})")
    print(f"baseline: PIL decode of {len(files)} images {decode:.1f} s")
    print(f"warm check / PIL decode = {runs[1] / decode:.2f}; warm check {runs[1]:.1f} s "
          f"(target < 20 s: {'met' if runs[1] < 20 else 'MISSED'})")


if __name__ == "__main__":
    main()
