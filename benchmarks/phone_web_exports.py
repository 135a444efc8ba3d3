"""Issue 27: the phone and web exports as a user runs them.

For a hymenoptera model (all 245 training images) and a digits model (100 per class, 1000
rows: more than the 500 a compact unknown detector keeps):

* each format as a whole ``headstart export`` process: seconds and bytes;
* INT8 TFLite against FP32 TFLite on the held-out images: label agreement and accuracy;
* the compact unknown detector against the full one: the same unknown decisions on held-out
  images of the set and on far images (another dataset);
* the web page in headless Chromium from file://: load time and milliseconds per image.

    python benchmarks/phone_web_exports.py [--datasets ../shared/datasets]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import parser

FORMATS = [("onnx", []), ("tflite", []), ("tflite", ["--int8"]), ("coreml", []),
           ("web", []), ("web", ["--fp16"])]


def _images(folder: Path, per_class: int, skip: int = 0) -> list[Path]:
    out = []
    for c in sorted(p for p in folder.iterdir() if p.is_dir()):
        out += sorted(c.iterdir())[skip:skip + per_class]
    return out


def _exports(model: Path, work: Path, samples: Path) -> None:
    for fmt, flags in FORMATS:
        out = work / f"{model.name}-{fmt}{''.join(flags)}"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "headstart", "export", str(model), "--format",
                            fmt, *flags, "--out", str(out), "--samples", str(samples), "--json"],
                           capture_output=True, text=True)
        took = time.perf_counter() - t
        if r.returncode:
            print(f"| {model.name} | {fmt} {' '.join(flags)} | failed: {r.stderr.strip()} |")
            continue
        j = json.loads(r.stdout)
        p = j["parity"]
        check = p["note"][:40] + "..." if p.get("numeric") is False else \
            f"{p['max_abs_diff']:.1e} / {p['label_agreement']:.0%}"
        ref = j.get("unknown_reference") or {}
        print(f"| {model.name} | {fmt} {' '.join(flags)} | {took:.1f} | {j['bytes'] / 1e6:.1f} | "
              f"{check} | {ref.get('rows', '-')} of {ref.get('of', '-')} |")


def _int8(clf, work: Path, name: str, held: list[Path]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from headstart.backbone.features import prepare_image

    pixels = [prepare_image(f, clf.backbone_.preprocess) for f in held]
    truth = np.array([clf.classes_.index(f.parent.name) for f in held])
    preds = {}
    for tag in ("tflite", "tflite--int8"):
        run = Interpreter(str(work / f"{name}-{tag}" / "model.tflite")).get_signature_runner()
        t = time.perf_counter()
        preds[tag] = np.array([run(images=p[None])["probabilities"][0].argmax() for p in pixels])
        ms = 1000 * (time.perf_counter() - t) / len(pixels)
        print(f"| {name} | {tag} | {len(held)} | {(preds[tag] == truth).mean():.4f} | {ms:.1f} |")
    print(f"| {name} | INT8 vs FP32 label agreement | {len(held)} | "
          f"{(preds['tflite'] == preds['tflite--int8']).mean():.4f} | |")


def _compact(clf, name: str, held: list[Path], far: list[Path]) -> None:
    from headstart.deploy.export import _answers, _features
    from headstart.deploy.graph import compact_reference
    from headstart.backbone.features import prepare_image

    ref = compact_reference(clf)
    for what, files in (("held-out", held), ("far", far)):
        feats = _features(clf, np.stack([prepare_image(f, clf.backbone_.preprocess)
                                         for f in files]))
        full, small = _answers(clf, feats, None)[2], _answers(clf, feats, ref)[2]
        print(f"| {name} | {len(ref)} of {len(clf.ood_.reference_)} | {what} ({len(files)}) | "
              f"{full.mean():.3f} | {small.mean():.3f} | {(full == small).mean():.4f} |")


def _page(folder: Path, clf, held: list[Path]) -> None:
    import base64

    from playwright.sync_api import sync_playwright

    from headstart.backbone.features import prepare_image

    pixels = [base64.b64encode(prepare_image(f, clf.backbone_.preprocess).tobytes()).decode()
              for f in held[:20]]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        t = time.perf_counter()
        page.goto((folder / "index.html").as_uri())
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
        load = time.perf_counter() - t
        ms = page.evaluate("""async (all) => { const px = all.map(b => Uint8Array.from(atob(b),
            c => c.charCodeAt(0))); await headstart.predictPixels(px[0]);
            const t = performance.now(); for (const p of px) await headstart.predictPixels(p);
            return (performance.now() - t) / px.length; }""", pixels)
        browser.close()
    print(f"| {folder.parent.name} | {load:.2f} | {ms:.1f} | {1000 / ms:.1f} |")


def main() -> None:
    args = parser(__doc__).parse_args()
    from headstart import Classifier

    d = args.datasets
    work = Path(tempfile.mkdtemp(prefix="hs-phone-web-"))
    hym_held = sorted((d / "hymenoptera" / "val").rglob("*.jpg"))
    digits_train = _images(d / "digits" / "train", 100)
    digits_held = _images(d / "digits" / "val", 20)
    cases = {
        "hymenoptera": (Classifier().fit(d / "hymenoptera" / "train"), hym_held,
                        _images(d / "textures", 20)),
        "digits": (Classifier().fit([str(f) for f in digits_train],
                                    labels=[f.parent.name for f in digits_train]),
                   digits_held, _images(d / "fashion_mnist" / "val", 20))}
    print("| model | format | export s (whole process) | MB | parity max dp / labels | "
          "unknown rows |\n|---|---|---|---|---|---|")
    for name, (clf, held, _) in cases.items():
        _exports(clf.save(work / name), work, held[0].parent)
    print("\n| model | runtime | images | accuracy | ms per image |\n|---|---|---|---|---|")
    for name, (clf, held, _) in cases.items():
        _int8(clf, work, name, held)
    print("\n| model | rows kept | images | unknown (full) | unknown (compact) | same decision |"
          "\n|---|---|---|---|---|---|")
    for name, (clf, held, far) in cases.items():
        _compact(clf, name, held, far)
    print("\n| model | page load s | ms per image | images per s |\n|---|---|---|---|")
    for name, (clf, held, _) in cases.items():
        _page(work / f"{name}-web" / "model.web", clf, held)


if __name__ == "__main__":
    main()
