"""Few-shot accuracy (issue 15): headstart's CLI against a plain 20-line probe, on k-shot
tasks of every shared dataset, whole processes both.

    python benchmarks/kshot.py [--datasets ../shared/datasets] [--k 1 5 20] [--seeds 3]
        [--sets hymenoptera safari ...] [--json results.json]
    python benchmarks/kshot.py --unlabelled [--foreign digits] ...

``--unlabelled`` (issue 30): per task, also an unlabelled pile of the same set's other
images (up to 200 per class, test images and the task's labelled images excluded), copied
into one flat folder under names that carry no label; headstart trained with ``train
--unlabelled PILE`` against headstart without it, on the same splits (the baseline is not
run). ``--foreign NAME``: the pile is NAME's images instead (another domain).

Tasks: for each set, a test set of up to 50 images per class (drawn once, seed 12345:
the `val` split where the set has one, else drawn from each class folder), and for each k
and seed a training set of k images per class drawn from the rest (seed 1000 + s). Test
images never overlap any training set.

  baseline   a separate Python process that does not import headstart: timm's
             `tf_efficientnet_lite0` with the packaged ImageNet weights, timm's eval
             transforms, eager pooled features of the train and test images, then
             scikit-learn `LogisticRegression` with C chosen by stratified CV
             (min(5, k) folds) over 10^-3..10^3 (C = 1 when k = 1)
  headstart  `headstart train TRAIN.csv --out M` then `headstart evaluate M TEST.csv
             --json --no-unknown` (accuracy of the top class, as the baseline), default
             settings, one feature cache for the run (as a user retraining on their own
             images has)

Printed: a table per k (mean accuracy over seeds per set, both methods, the difference),
the mean difference, the worst set, the mean of near (hymenoptera, safari) and far sets,
the whole-process seconds per task of each, and headstart's calibration on the test
images (ECE of the raw and of the temperature-scaled probabilities; predictions above 90%
confidence, how many were wrong and how many the probabilities expected to be wrong).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import LITE0_EAGER, parser

SETS = ("hymenoptera", "safari", "digits", "steel_defects", "aerial", "blood_cells",
        "textures")
NEAR = ("hymenoptera", "safari")
IMAGES = {".jpg", ".jpeg", ".png", ".bmp"}

BASELINE = r'''
import csv, sys, time
from pathlib import Path
import numpy as np, torch, timm
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
torch.set_num_threads(2)
''' + LITE0_EAGER + r'''cfg = timm.data.resolve_data_config({}, model=model)
tf = timm.data.create_transform(**cfg)
def rows(path):
    r = list(csv.DictReader(open(path)))
    return [x["path"] for x in r], [x["label"] for x in r]
def feats(files):
    out = []
    with torch.inference_mode():
        for i in range(0, len(files), 32):
            x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i:i + 32]])
            out.append(model(x).numpy())
    return np.concatenate(out)
ftr, ltr = rows(sys.argv[1]); fte, lte = rows(sys.argv[2])
Xtr, Xte = feats(ftr), feats(fte)
classes = sorted(set(ltr)); ytr = np.array([classes.index(l) for l in ltr])
yte = np.array([classes.index(l) for l in lte])
Cs = [10.0 ** e for e in range(-3, 4)]
k = np.bincount(ytr).min()
if k >= 2:
    cv = StratifiedKFold(min(5, k), shuffle=True, random_state=0)
    score = [np.mean([LogisticRegression(C=C, max_iter=1000).fit(Xtr[a], ytr[a]).score(Xtr[b], ytr[b])
                      for a, b in cv.split(Xtr, ytr)]) for C in Cs]
    C = Cs[int(np.argmax(score))]
else:
    C = 1.0
print(LogisticRegression(C=C, max_iter=1000).fit(Xtr, ytr).score(Xte, yte))
'''


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGES)


def pools(root: Path, name: str, test_per_class: int = 50
          ) -> tuple[list[str], dict[str, list[Path]], dict[str, list[Path]]]:
    """``(classes, training pool per class, test images per class)`` of one set."""
    d = root / name
    rng = np.random.default_rng(12345)
    train: dict[str, list[Path]] = {}
    test: dict[str, list[Path]] = {}
    if (d / "train").is_dir():
        held = d / ("val" if (d / "val").is_dir() else "test")
        classes = sorted(p.name for p in (d / "train").iterdir() if p.is_dir())
        for c in classes:
            train[c] = files_of(d / "train" / c)
            fs = files_of(held / c)
            test[c] = [fs[i] for i in sorted(rng.permutation(len(fs))[:test_per_class])]
    else:
        classes = sorted(p.name for p in d.iterdir() if p.is_dir())
        for c in classes:
            fs = files_of(d / c)
            order = rng.permutation(len(fs))
            test[c] = [fs[i] for i in sorted(order[:test_per_class])]
            train[c] = [fs[i] for i in sorted(order[test_per_class:])]
    return classes, train, test


def draw(pool: dict[str, list[Path]], k: int, seed: int) -> dict[str, list[Path]]:
    """``k`` training images per class (seed ``1000 + seed``)."""
    rng = np.random.default_rng(1000 + seed)
    return {c: [fs[i] for i in sorted(rng.permutation(len(fs))[:k])] for c, fs in pool.items()}


def write_csv(path: Path, files: dict[str, list[Path]]) -> Path:
    lines = ["path,label"] + [f"{f.resolve()},{c}" for c, fs in files.items() for f in fs]
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - t, done.stdout


def one_task(work: Path, train_csv: Path, test_csv: Path, env: dict[str, str]
             ) -> dict[str, float]:
    headstart = [sys.executable, "-m", "headstart"]
    t_base, out = timed([sys.executable, str(work / "baseline.py"), str(train_csv),
                         str(test_csv)], env)
    model = work / "model"
    t_train, _ = timed(headstart + ["train", str(train_csv), "--out", str(model)], env)
    t_eval, out2 = timed(headstart + ["evaluate", str(model), str(test_csv), "--json",
                                      "--no-unknown"], env)
    m = json.loads(out2)
    c = m["calibration"]
    return {"baseline": float(out.strip().splitlines()[-1]), "headstart": m["accuracy"],
            "baseline_s": t_base, "headstart_s": t_train + t_eval,
            "ece_raw": c["ece_before"], "ece_calibrated": c["ece_after"],
            "temperature": c["temperature"], "above_90": c["above_90"]["images"],
            "above_90_wrong": c["above_90"]["wrong"],
            "above_90_expected_wrong": c["above_90"]["expected_wrong"]}


def write_pile(folder: Path, pool: dict[str, list[Path]], taken: dict[str, list[Path]],
               per_class: int = 200) -> Path:
    """Up to ``per_class`` images per class of ``pool`` not in ``taken``, copied into
    ``folder`` as ``000000.ext``... (no label in any name)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    files = []
    for c, fs in pool.items():
        used = set(taken.get(c, []))
        files += [f for f in fs if f not in used][:per_class]
    order = np.random.default_rng(0).permutation(len(files))
    for n, i in enumerate(order):
        shutil.copy(files[i], folder / f"{n:06d}{files[i].suffix.lower()}")
    return folder


def pile_task(work: Path, train_csv: Path, test_csv: Path, pile: Path,
              env: dict[str, str]) -> dict[str, float]:
    """headstart without and with the pile: test accuracy, seconds, and the pile record."""
    headstart = [sys.executable, "-m", "headstart"]
    out: dict[str, float] = {}
    for name, extra in (("headstart", []), ("pile", ["--unlabelled", str(pile)])):
        model = work / f"model-{name}"
        t, said = timed(headstart + ["train", str(train_csv), "--out", str(model), "--json",
                                     *extra], env)
        _, ev = timed(headstart + ["evaluate", str(model), str(test_csv), "--json",
                                   "--no-unknown"], env)
        out[name], out[f"{name}_s"] = json.loads(ev)["accuracy"], t
        if extra:
            out["record"] = json.loads(said).get("unlabelled")
    return out


def report_pile(results: list[dict]) -> None:
    for k in sorted({r["k"] for r in results}):
        rows = [r for r in results if r["k"] == k]
        per = {n: 100 * np.mean([r["pile"] - r["headstart"] for r in rows if r["set"] == n])
               for n in dict.fromkeys(r["set"] for r in rows)}
        worst = min(per, key=per.get)
        print(f"k = {k}: mean gain {np.mean(list(per.values())):+.2f} points; worst {worst} "
              f"{per[worst]:+.2f}; " + ", ".join(f"{n} {v:+.1f}" for n, v in per.items()) +
              f"; train seconds without {np.mean([r['headstart_s'] for r in rows]):.1f}, "
              f"with {np.mean([r['pile_s'] for r in rows]):.1f}")


def report(results: list[dict]) -> None:
    for k in sorted({r["k"] for r in results}):
        rows = [r for r in results if r["k"] == k]
        print(f"\nk = {k} images per class (mean over seeds)")
        print(f"  {'set':14s} {'baseline':>9s} {'headstart':>9s} {'diff':>7s} "
              f"{'base s':>7s} {'hs s':>7s}")
        diffs = {}
        for name in dict.fromkeys(r["set"] for r in rows):
            mine = [r for r in rows if r["set"] == name]
            b = np.mean([r["baseline"] for r in mine])
            h = np.mean([r["headstart"] for r in mine])
            diffs[name] = 100 * (h - b)
            print(f"  {name:14s} {b:9.3f} {h:9.3f} {diffs[name]:+7.2f} "
                  f"{np.mean([r['baseline_s'] for r in mine]):7.1f} "
                  f"{np.mean([r['headstart_s'] for r in mine]):7.1f}")
        worst = min(diffs, key=diffs.get)
        near = [d for n, d in diffs.items() if n in NEAR]
        far = [d for n, d in diffs.items() if n not in NEAR]
        print(f"  test ECE: raw {np.mean([r['ece_raw'] for r in rows]):.4f}, calibrated "
              f"{np.mean([r['ece_calibrated'] for r in rows]):.4f}; above 90% confident: "
              f"{sum(r['above_90'] for r in rows)} images, "
              f"{sum(r['above_90_wrong'] for r in rows)} wrong, "
              f"{sum(r['above_90_expected_wrong'] for r in rows):.1f} expected wrong")
        print(f"  mean diff {np.mean(list(diffs.values())):+.2f} points; worst {worst} "
              f"{diffs[worst]:+.2f}; near {np.mean(near) if near else float('nan'):+.2f}, "
              f"far {np.mean(far) if far else float('nan'):+.2f}; seconds per task: "
              f"baseline {np.mean([r['baseline_s'] for r in rows]):.1f}, headstart "
              f"{np.mean([r['headstart_s'] for r in rows]):.1f}")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--json", type=Path, help="write every task's figures here")
    ap.add_argument("--unlabelled", action="store_true", help="with and without a pile")
    ap.add_argument("--foreign", help="with --unlabelled: the pile from this set instead")
    args = ap.parse_args()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kshot-") as tmp:
        work = Path(tmp)
        (work / "baseline.py").write_text(BASELINE)
        env = {**os.environ, "HEADSTART_CACHE": str(work / "cache")}
        for name in args.sets:
            classes, pool, test = pools(args.datasets, name)
            test_csv = write_csv(work / f"{name}-test.csv", test)
            for k in args.k:
                for seed in range(args.seeds):
                    drawn = draw(pool, k, seed)
                    train_csv = write_csv(work / "train.csv", drawn)
                    if args.unlabelled:
                        source = pools(args.datasets, args.foreign)[1] if args.foreign \
                            else pool
                        pile = write_pile(work / "pile", source, drawn)
                        r = {"set": name, "k": k, "seed": seed,
                             **pile_task(work, train_csv, test_csv, pile, env)}
                        results.append(r)
                        print(f"{name} k={k} seed={seed}: without {r['headstart']:.3f} with "
                              f"{r['pile']:.3f} ({r['headstart_s']:.1f} s / {r['pile_s']:.1f}"
                              f" s) {r['record']['reason']}", flush=True)
                        continue
                    r = {"set": name, "k": k, "seed": seed,
                         **one_task(work, train_csv, test_csv, env)}
                    results.append(r)
                    print(f"{name} k={k} seed={seed}: baseline {r['baseline']:.3f} "
                          f"headstart {r['headstart']:.3f} ({r['baseline_s']:.1f} s / "
                          f"{r['headstart_s']:.1f} s)", flush=True)
    (report_pile if args.unlabelled else report)(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
