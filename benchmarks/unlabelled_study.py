"""In-process study of ways to learn from an unlabelled pile on frozen features (issue 30),
on the features written by ``unlabelled_features.py``: per task, k labelled images per
class, a pile of up to 200 other images per class (labels hidden), the 50-per-class test
images; each method's test accuracy against the head fitted on the labelled images alone.

    python benchmarks/unlabelled_study.py [--k 1 5 20] [--seeds 2] [--methods ...]
        [--features /tmp/unlabelled-features] [--foreign digits] [--json out.json]

``--foreign NAME``: the pile is NAME's images instead (another domain): the check that a
pile that does not belong is harmless.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from common import parser

from headstart.fit.unlabelled import (UnlabelledConfig, fit_labelled, fit_with_pile,
                                      learn_from_pile)
from headstart.heads.base import FEW_SHOT_MAX_PER_CLASS


def load(folder: Path, name: str) -> dict:
    z = np.load(folder / f"{name}.npz", allow_pickle=False)
    return {k: z[k] for k in z.files}


def task(d: dict, k: int, seed: int, pool: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled rows, pile rows)`` of one task (seed ``1000 + seed``)."""
    rng = np.random.default_rng(1000 + seed)
    lab, pile = [], []
    for c in range(len(d["classes"])):
        rows = np.flatnonzero((d["y"] == c) & ~d["is_test"])
        rows = rows[rng.permutation(len(rows))]
        lab += list(rows[:k])
        pile += list(rows[k:k + pool])
    return np.array(lab), np.array(pile)


def features(d: dict, k: int) -> tuple[np.ndarray, tuple, tuple | None]:
    """The feature matrix, tapped block widths and ImageNet head ``train`` would use."""
    near = str(d["gap"]) == "near"
    taps = not near and k <= FEW_SHOT_MAX_PER_CLASS
    widths = tuple(int(w) for w in d["widths"])
    X = d["X"] if taps else d["X"][:, :d["X"].shape[1] - sum(widths)]
    return X, (widths if taps else ()), ((d["w"], d["b"]) if near else None)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--features", type=Path, default=Path("/tmp/unlabelled-features"))
    ap.add_argument("--sets", nargs="+", default=["hymenoptera", "safari", "digits",
                                                  "steel_defects", "aerial", "blood_cells",
                                                  "textures", "fashion_mnist"])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["auto"])
    ap.add_argument("--foreign")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--active", action="store_true", help="simulate active labelling")
    args = ap.parse_args()
    if args.active:
        return active(args)
    out = []
    foreign = load(args.features, args.foreign) if args.foreign else None
    for name in args.sets:
        d = load(args.features, name)
        test = np.flatnonzero(d["is_test"])
        for k in args.k:
            X, blocks, imagenet = features(d, k)
            for seed in range(args.seeds):
                lab, pile = task(d, k, seed)
                Xp = X[pile]
                if foreign is not None:
                    Xf, _, _ = features(foreign, k)
                    Xp = Xf[np.random.default_rng(seed).permutation(len(Xf))[:len(pile)],
                            :X.shape[1]] if Xf.shape[1] >= X.shape[1] else Xf
                t = time.perf_counter()
                base = fit_labelled(X[lab], d["y"][lab], blocks, imagenet)
                t_base = time.perf_counter() - t
                acc0 = float(np.mean(base.predict(X[test]) == d["y"][test]))
                row = {"set": name, "k": k, "seed": seed, "base": acc0, "base_s": t_base}
                for m in args.methods:
                    t = time.perf_counter()
                    parts = m.split(":")
                    how, frac, rep, rounds = parts + ["0.5", "final", "1"][len(parts) - 1:]
                    cfg = UnlabelledConfig(method=how.lstrip("g"), fraction=float(frac),
                                           rep=rep, rounds=int(rounds))
                    if how.startswith("g"):  # as train does: unknown filter, cross-check
                        head, summary = learn_from_pile(X[lab], d["y"][lab], Xp, base,
                                                        blocks, imagenet, cfg)
                        info = {"used": summary.used if summary.kept else 0}
                    else:
                        head, info = fit_with_pile(X[lab], d["y"][lab], Xp, blocks,
                                                   imagenet, cfg, base=base)
                    row[m] = float(np.mean(head.predict(X[test]) == d["y"][test]))
                    row[m + "_s"] = time.perf_counter() - t
                    row[m + "_info"] = info
                out.append(row)
                print(f"{name} k={k} s={seed}: base {acc0:.3f} " + " ".join(
                    f"{m} {row[m]:.3f} ({100 * (row[m] - acc0):+.1f}, {row[m + '_s']:.1f}s, "
                    f"{row[m + '_info'].get('used', '')})" for m in args.methods), flush=True)
    for k in args.k:
        rows = [r for r in out if r["k"] == k]
        for m in args.methods:
            per = {n: 100 * np.mean([r[m] - r["base"] for r in rows if r["set"] == n])
                   for n in args.sets}
            print(f"k={k} {m}: mean {np.mean(list(per.values())):+.2f}; " +
                  ", ".join(f"{n} {v:+.1f}" for n, v in per.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))




def active(args) -> None:
    """Active labelling, simulated: from k labelled images per class, label 5 x (classes)
    more from the pile, chosen by ``suggest``'s :func:`pick` (labels unseen) or at random;
    the test accuracy of the head refitted on each."""
    from headstart.insight.suggest import _unit, collapse, pick

    out = []
    for name in args.sets:
        d = load(args.features, name)
        test, K = np.flatnonzero(d["is_test"]), len(d["classes"])
        for k in args.k:
            X, blocks, imagenet = features(d, k)
            for seed in range(args.seeds):
                lab, pile = task(d, k, seed)
                base = fit_labelled(X[lab], d["y"][lab], blocks, imagenet)
                Z = _unit(X[pile][:, :X.shape[1] - sum(blocks)])
                order = np.arange(len(pile))
                kept, _ = collapse(Z, order)
                proba = base.predict_proba(X[pile][kept])
                Zl = _unit(X[lab][:, :X.shape[1] - sum(blocks)])
                rand = pile[np.random.default_rng(seed).permutation(len(pile))[:5 * K]]
                row = {"set": name, "k": k, "seed": seed}
                picks = {m: pile[kept[pick(Z[kept], proba, 5 * K, seed,
                                           labelled=Zl if m.startswith("cov") else None,
                                           weight=float(m.split(":")[1]))]]
                         for m in args.methods}  # km:W (no labelled) or cov:W
                for what, more in (*picks.items(), ("random", rand)):
                    rows = np.concatenate([lab, more])
                    head = fit_labelled(X[rows], d["y"][rows], blocks, imagenet)
                    row[what] = float(np.mean(head.predict(X[test]) == d["y"][test]))
                out.append(row)
                print(f"{name} k={k} s={seed}: random {row['random']:.3f} " + " ".join(
                    f"{m} {100 * (row[m] - row['random']):+.1f}" for m in picks), flush=True)
    for k in args.k:
        for m in args.methods:
            per = {n: 100 * np.mean([r[m] - r["random"] for r in out
                                     if r["set"] == n and r["k"] == k]) for n in args.sets}
            print(f"k={k} {m} - random: mean {np.mean(list(per.values())):+.2f}; " +
                  ", ".join(f"{n} {v:+.1f}" for n, v in per.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
