"""What an unlabelled pile costs (issue 30), whole ``headstart`` processes:

    python benchmarks/unlabelled_speed.py [--pile 2000] [--suggest 10000]

1. ``train`` on 5 labelled digits per class (the ``val`` split) with a pile of ``--pile``
   training digits: without the pile, with it on a cold feature cache (its features
   computed), and with it again on a warm cache. The pile's extraction is cold - warm;
   what learning from it adds on top is warm - without. Acceptance: cold - without at most
   2x the extraction.
2. ``suggest`` over ``--suggest`` digits whose features are cached (a first run fills the
   cache): seconds of the second run. Acceptance: under 10 s.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parser


def timed(*args: str, env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"headstart {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    import os

    ap = parser(__doc__)
    ap.add_argument("--pile", type=int, default=2000)
    ap.add_argument("--suggest", type=int, default=10000)
    ap.add_argument("--only-suggest", action="store_true", help="skip the train timings")
    args = ap.parse_args()
    digits = args.datasets / "digits"
    with tempfile.TemporaryDirectory(prefix="pile-speed-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "HEADSTART_CACHE": str(work / "cache")}
        lab, pile, big = work / "lab", work / "pile", work / "big"
        classes = sorted(p.name for p in (digits / "val").iterdir())
        for c in classes:
            (lab / c).mkdir(parents=True)
            for f in sorted((digits / "val" / c).iterdir())[:5]:
                shutil.copy(f, lab / c / f.name)
        every = [f for c in classes for f in sorted((digits / "train" / c).iterdir())]
        pile.mkdir()
        big.mkdir()
        step = max(1, len(every) // args.pile)
        for i, f in enumerate(every[::step][:args.pile]):
            shutil.copy(f, pile / f"{i:06d}.png")
        for i, f in enumerate((every * (1 + args.suggest // len(every)))[:args.suggest]):
            shutil.copy(f, big / f"{i:06d}.png") if i < len(every) else \
                (big / f"{i:06d}.png").write_bytes(f.read_bytes() + i.to_bytes(4, "big"))
        base = timed("train", str(lab), "--out", str(work / "m0"), env=env)
        if args.only_suggest:
            return suggest_timing(work, big, args.suggest, env)
        cold = timed("train", str(lab), "--out", str(work / "m1"), "--unlabelled", str(pile),
                     env=env)
        warm = timed("train", str(lab), "--out", str(work / "m2"), "--unlabelled", str(pile),
                     env=env)
        extract = cold - warm
        print(f"train without pile {base:.1f} s; with {args.pile} unlabelled: cold cache "
              f"{cold:.1f} s, warm {warm:.1f} s; extraction {extract:.1f} s, learning "
              f"{warm - base:.1f} s; added / extraction = {(cold - base) / extract:.2f} "
              f"(acceptance <= 2)")
        suggest_timing(work, big, args.suggest, env)


def suggest_timing(work: Path, big: Path, n: int, env: dict[str, str]) -> None:
    first = timed("suggest", str(work / "m0"), str(big), "--n", "20", env=env)
    again = timed("suggest", str(work / "m0"), str(big), "--n", "20", env=env)
    print(f"suggest over {n} images: {first:.1f} s cold, {again:.1f} s with cached "
          f"features (acceptance < 10 s)")


if __name__ == "__main__":
    main()
