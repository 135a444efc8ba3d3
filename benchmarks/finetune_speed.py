"""Fine-tuning epoch time: this tree against an earlier commit and a plain PyTorch loop,
in one run on the same machine (issue 31).

    python benchmarks/finetune_speed.py --baseline e69f303 [--epochs 3] [--cases hymenoptera,digits]

Cases (as the user runs them, whole `headstart train` processes with an empty feature
cache each):

* hymenoptera, `--finetune last-3` at 224 px, light augmentation;
* digits, the first 200 training images per class (validation: all of digits/val),
  `--finetune all --augment none` at 64 px.

Runs per case: the `--baseline` commit (checked out in a temporary git worktree, run with
the same Python), this tree, this tree with `HEADSTART_BF16=0` (bfloat16 paths off, as on
laptops without AMX / AVX-512 BF16), and a plain loop: timm's EfficientNet-Lite0 with the
same weights and the same stages trainable, images decoded and augmented each epoch,
float32, Adam, no caching. Prints per-epoch seconds (median over epochs, validation
included), the whole process's seconds, the validation accuracy of the fine-tuned model,
and the ratios against this tree.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import LITE0_EAGER, parser

ROOT = Path(__file__).resolve().parents[1]

PLAIN = r'''
import sys, time, json, torch, timm
from pathlib import Path
from torch import nn
from torchvision import datasets, transforms as T
torch.set_num_threads(int(sys.argv[5]))
''' + LITE0_EAGER + r'''
train_csv, val_dir, size, mode, _, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
aug = mode != "all"
norm = T.Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
tf_train = T.Compose(([T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip()]
                      if aug else [T.Resize(size), T.CenterCrop(size)]) + [T.ToTensor(), norm])
tf_val = T.Compose([T.Resize(int(size / 0.875) if aug else size), T.CenterCrop(size), T.ToTensor(), norm])
def rgb(p): return datasets.folder.default_loader(p)
rows = [l.split(",") for l in Path(train_csv).read_text().splitlines()[1:]]
classes = sorted({c for _, c in rows})
class DS(torch.utils.data.Dataset):
    def __init__(s, items, tf): s.items, s.tf = items, tf
    def __len__(s): return len(s.items)
    def __getitem__(s, i): p, c = s.items[i]; return s.tf(rgb(p)), classes.index(c)
val = [(str(p), p.parent.name) for p in sorted(Path(val_dir).glob("*/*"))]
tr = torch.utils.data.DataLoader(DS(rows, tf_train), batch_size=32, shuffle=True)
va = torch.utils.data.DataLoader(DS(val, tf_val), batch_size=64)
stages = [model.conv_stem, model.bn1, *model.blocks, model.conv_head, model.bn2]
train_from = 0 if mode == "all" else len(stages) - 4   # last-3: blocks.4, blocks.5, blocks.6 + conv_head
for p in model.parameters(): p.requires_grad_(False)
for m in stages[train_from:]:
    for p in m.parameters(): p.requires_grad_(True)
head = nn.Linear(model.num_features, len(classes))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(head.parameters()), 1e-4)
times, acc = [], 0.0
for e in range(epochs):
    t = time.perf_counter()
    model.train()
    for m in stages[:train_from]: m.eval()
    for x, y in tr:
        loss = nn.functional.cross_entropy(head(model(x)), y); opt.zero_grad(); loss.backward(); opt.step()
    model.eval(); ok = 0
    with torch.no_grad():
        for x, y in va: ok += int((head(model(x)).argmax(1) == y).sum())
    acc = ok / len(val); times.append(time.perf_counter() - t)
print(json.dumps({"epoch_seconds": times, "val_accuracy": acc}))
'''


def cases(datasets: Path, tmp: Path) -> dict[str, dict]:
    """Each case's data, validation folder, mode, image size and extra flags."""
    hym = datasets / "hymenoptera"
    rows = ["path,label"] + [f"{f},{f.parent.name}"
                             for f in sorted((hym / "train").glob("*/*"))]
    (tmp / "hym.csv").write_text("\n".join(rows) + "\n")
    digits = datasets / "digits"
    rows = ["path,label"]
    for cls in sorted(p.name for p in (digits / "train").iterdir()):
        rows += [f"{f},{cls}" for f in sorted((digits / "train" / cls).iterdir())[:200]]
    (tmp / "digits.csv").write_text("\n".join(rows) + "\n")
    return {
        "hymenoptera": {"csv": tmp / "hym.csv", "val": hym / "val", "mode": "last-3",
                        "size": 224, "flags": []},
        "digits": {"csv": tmp / "digits.csv", "val": digits / "val", "mode": "all",
                   "size": 64, "flags": ["--augment", "none"]},
    }


def run_headstart(src: Path, case: dict, epochs: int, tmp: Path, env_extra: dict) -> dict:
    """One whole `headstart train --finetune` process from ``src``: per-epoch seconds,
    process seconds, fine-tuned validation accuracy."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    env = {**os.environ, "PYTHONPATH": str(src), "HEADSTART_CACHE": str(out / "cache"),
           **env_extra}
    cmd = [sys.executable, "-m", "headstart", "train", str(case["csv"]), "--val",
           str(case["val"]), "--out", str(out / "m"), "--finetune", case["mode"],
           "--epochs", str(epochs), "--patience", "99", "--head", "linear", "--json",
           *case["flags"]]
    where = subprocess.run([sys.executable, "-c", "import headstart; print(headstart.__file__)"],
                           env=env, capture_output=True, text=True).stdout
    if not where.startswith(str(src)):
        sys.exit(f"headstart imported from {where!r}, not {src}")
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    s = json.loads(r.stdout)
    rows = [ln.split(",") for ln in (out / "m" / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("seconds")
    return {"epoch_seconds": [float(x[col]) for x in rows[1:]], "process_seconds": wall,
            "finetune_minutes": s["finetune"]["minutes"],
            "val_accuracy": s["finetune"]["val_accuracy_finetuned"]}


def run_plain(case: dict, epochs: int) -> dict:
    """The plain PyTorch loop over the same data and stages."""
    from headstart._threads import cores

    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PLAIN, str(case["csv"]), str(case["val"]),
                        str(case["size"]), case["mode"], str(cores()), str(epochs)],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {**out, "process_seconds": time.perf_counter() - t}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--baseline", required=True, help="commit to compare with")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cases", default="hymenoptera,digits")
    ap.add_argument("--json", type=Path, help="write the results here too")
    a = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        base = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        a.baseline], check=True, capture_output=True)
        try:
            all_cases = cases(a.datasets, tmp)
            for name in a.cases.split(","):
                case, res = all_cases[name], {}
                res["baseline"] = run_headstart(base / "src", case, a.epochs, tmp, {})
                res["now"] = run_headstart(ROOT / "src", case, a.epochs, tmp, {})
                res["now, bf16 off"] = run_headstart(ROOT / "src", case, a.epochs, tmp,
                                                     {"HEADSTART_BF16": "0"})
                res["plain loop"] = run_plain(case, a.epochs)
                results[name] = res
                report(name, res)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                           capture_output=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


def report(name: str, res: dict) -> None:
    """One line per run: median epoch seconds, process seconds, accuracy, ratios."""
    now = statistics.median(res["now"]["epoch_seconds"])
    print(f"{name}:")
    for run, r in res.items():
        med = statistics.median(r["epoch_seconds"])
        print(f"  {run:14s} epoch {med:6.1f} s ({med / now:4.1f}x this tree)  process "
              f"{r['process_seconds']:6.1f} s  val accuracy {r['val_accuracy']:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
