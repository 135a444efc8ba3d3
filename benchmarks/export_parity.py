"""Issue 8: export parity for the default backbone on a safari model and a hymenoptera
model, in both formats: the exported file against the model in PyTorch on held-out images.

    python benchmarks/export_parity.py [--datasets ../shared/datasets]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import parser, safari_split


def main() -> None:
    args = parser(__doc__).parse_args()
    from headstart import Classifier, export

    work = Path(tempfile.mkdtemp(prefix="hs-export-"))
    train_csv, _ = safari_split(args.datasets, work)
    hym = args.datasets / "hymenoptera"
    cases = {"safari (10 per class)": (train_csv, [args.datasets / "safari"]),
             "hymenoptera": (hym, [hym / "val"])}
    print("| model | format | parity images | max abs prob diff | max abs unknown-score diff "
          "| labels identical | export + check s |")
    print("|---|---|---|---|---|---|---|")
    for name, (data, samples) in cases.items():
        model = Classifier().fit(data).save(work / name.split()[0])
        for fmt in ("onnx", "openvino"):
            t = time.perf_counter()
            r = export(model, fmt, samples=samples)
            p = r["parity"]
            print(f"| {name} | {fmt} | {p['images']} | {p['max_abs_diff']:.1e} | "
                  f"{p['max_abs_diff_unknown_score']:.1e} | {p['labels_identical']} | "
                  f"{time.perf_counter() - t:.1f} |")


if __name__ == "__main__":
    main()
