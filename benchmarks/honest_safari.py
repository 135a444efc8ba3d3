"""Calibration and "unknown" rejection on the safari model (issue 6).

    python benchmarks/honest_safari.py [--datasets ../shared/datasets] [--out report-dir]

Trains on the first 10 safari images per class (sorted by name), evaluates on the other
364 with `--report`, then scores every hymenoptera image (ants and bees: never seen, not
elephants or giraffes). Prints ECE before/after temperature scaling, the OOD AUROC (safari
test vs hymenoptera), and the fraction of each set labelled unknown.
Targets: ECE after <= before; AUROC >= 0.95; >= 90% of ants/bees unknown; <= 5% of safari.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import parser, safari_split

import numpy as np


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, default=None, help="keep the report here")
    a = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from headstart import Classifier

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_csv, test_csv = safari_split(a.datasets, tmp)
        subprocess.run([sys.executable, "-m", "headstart", "train", str(train_csv),
                        "--out", str(tmp / "m")], check=True, capture_output=True)
        out = a.out or tmp / "report"
        r = subprocess.run([sys.executable, "-m", "headstart", "evaluate", str(tmp / "m"),
                            str(test_csv), "--report", str(out / "report.html"),
                            "--json"], check=True, capture_output=True, text=True)
        m = json.loads(r.stdout)
        c = m["calibration"]
        print(f"safari test: accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci95'][0]:.4f}"
              f"-{m['accuracy_ci95'][1]:.4f}); ECE {c['ece_before']:.4f} before, "
              f"{c['ece_after']:.4f} after temperature scaling (T={c['temperature']:.3f})")
        clf = Classifier.load(tmp / "m")
        inside = clf.predict_images([line.split(",")[0]
                                     for line in test_csv.read_text().splitlines()[1:]])
        outside = clf.predict_images(sorted((a.datasets / "hymenoptera").rglob("*.jpg")))
        scores = np.r_[inside.ood_score, outside.ood_score]
        truth = np.r_[np.zeros(len(inside.ood_score)), np.ones(len(outside.ood_score))]
        print(f"unknown: AUROC {roc_auc_score(truth, scores):.4f}; ants/bees unknown "
              f"{outside.rejected.mean():.1%} of {len(outside.rejected)}; safari test unknown "
              f"{inside.rejected.mean():.1%} of {len(inside.rejected)}; report: {out}")


if __name__ == "__main__":
    main()
