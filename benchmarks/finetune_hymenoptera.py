"""`--finetune auto` on hymenoptera never ends below the head-only model (issue 4).

    python benchmarks/finetune_hymenoptera.py [--datasets ../shared/datasets]

Both classes have more than 50 training images, so `auto` fine-tunes the top 3 stages at
224 px; the model kept must have a validation accuracy >= the head-only one, measured on
the same 153 validation images. Prints both and the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from common import parser


def main() -> None:
    ap = parser(__doc__)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "headstart", "train",
                            str(a.datasets / "hymenoptera"), "--out", f"{tmp}/m",
                            "--finetune", "auto", "--json"], capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr)
        s = json.loads(r.stdout)
        f = s["finetune"]
        print(f"head only {f['val_accuracy_head_only']:.4f}, fine-tuned "
              f"{f.get('val_accuracy_finetuned', float('nan')):.4f} "
              f"({f.get('epochs')} epochs, {f.get('unfrozen')}), kept {f.get('kept')}: "
              f"final val accuracy {s['val_accuracy']:.4f}; "
              f"{(time.perf_counter() - t) / 60:.1f} min")
        if s["val_accuracy"] < f["val_accuracy_head_only"]:
            sys.exit("FAIL: the kept model is worse than head-only")


if __name__ == "__main__":
    main()
