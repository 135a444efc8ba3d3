"""Leave-one-dataset-out choice among the methods of ``unlabelled_study.py`` runs (issue
30): for each set, the method with the best mean gain on the other sets, and the gain it
then has on the set left out; beside it, each method's mean over all sets (the choice
made looking at every set).

    python benchmarks/unlabelled_lodo.py study1.json [study2.json ...] [--k 5]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    args = ap.parse_args()
    gains: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    for path in args.files:
        for r in json.load(open(path)):
            for m, v in r.items():
                if isinstance(v, float) and m not in ("base", "base_s") and \
                        not m.endswith("_s"):
                    gains[(r["k"], m, r["set"])].append(100 * (v - r["base"]))
    for k in args.k:
        methods = sorted({m for kk, m, _ in gains if kk == k})
        sets = sorted({s for kk, _, s in gains if kk == k})
        mean = {(m, s): float(np.mean(gains[(k, m, s)])) for m in methods for s in sets
                if gains.get((k, m, s))}
        methods = [m for m in methods if all((m, s) in mean for s in sets)]
        if not methods:
            continue
        print(f"k = {k}")
        for m in methods:
            print(f"  {m:28s} mean over all sets {np.mean([mean[(m, s)] for s in sets]):+.2f}")
        held = {}
        for s in sets:
            best = max(methods, key=lambda m: np.mean([mean[(m, o)] for o in sets if o != s]))
            held[s] = (best, mean[(best, s)])
        print("  left out: " + ", ".join(f"{s} {g:+.1f} ({m})" for s, (m, g) in held.items()))
        print(f"  leave-one-dataset-out mean {np.mean([g for _, g in held.values()]):+.2f}")


if __name__ == "__main__":
    main()
