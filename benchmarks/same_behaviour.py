"""Before/after check for refactors: probabilities of a few fixed models, saved to compare.

    python benchmarks/same_behaviour.py OUT.npz           # capture with the importable headstart
    python benchmarks/same_behaviour.py OUT.npz --against BEFORE.npz   # and compare

Cases: hymenoptera (train -> val), safari 10-shot (rest as test), textures 5-shot (a far set:
the tapped blocks), the v0.1.0 fixture model, and the ONNX export's parity figures. Every
probability must agree within 1e-6.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
IMAGES = {".jpg", ".jpeg", ".png", ".bmp"}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGES)


def _shots(name: str, k: int) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(7)
    train, labels, test = [], [], []
    for c in sorted(p for p in (DATA / name).iterdir() if p.is_dir()):
        files = _files(c)
        rng.shuffle(files)
        train += [str(f) for f in files[:k]]
        labels += [c.name] * k
        test += [str(f) for f in files[k:k + 15]]
    return train, labels, test


def capture() -> dict[str, np.ndarray]:
    import headstart
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        clf = headstart.Classifier(cache=False).fit(str(DATA / "hymenoptera" / "train"))
        out["hymenoptera"] = clf.predict_proba([str(p) for p in _files(DATA / "hymenoptera" / "val")])
        clf.save(Path(tmp) / "hym")
        report = headstart.export(Path(tmp) / "hym", "onnx")
        out["onnx_parity"] = np.array([report["parity"]["max_abs_diff"]])
        for name, k in (("safari", 10), ("textures", 5)):
            train, labels, test = _shots(name, k)
            clf = headstart.Classifier(cache=False).fit(train, labels=labels)
            out[name] = clf.predict_proba(test)
            out[name + "_taps"] = np.array([len(clf.backbone_.taps or ())])
        fixture = headstart.Classifier.load(ROOT / "tests" / "fixtures" / "model-v0.1.0")
        out["fixture"] = fixture.predict_proba([str(p) for p in _files(DATA / "safari")[:20]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--against")
    args = ap.parse_args()
    now = capture()
    np.savez(args.out, **now)
    if args.against:
        before = dict(np.load(args.against))
        worst = 0.0
        for key, value in before.items():
            diff = float(np.max(np.abs(value - now[key]))) if value.shape == now[key].shape else np.inf
            worst = max(worst, diff) if not key.endswith("parity") else worst
            print(f"{key:16s} shape {value.shape} max |diff| {diff:.2e}")
        print(f"worst probability difference: {worst:.2e}")
        sys.exit(0 if worst <= 1e-6 else 1)


if __name__ == "__main__":
    main()
