"""Acceptance figures of `headstart advise` (issues 5 and 31), through the CLI.

    python benchmarks/advise_acceptance.py [--datasets ../shared/datasets] [--digits-only]

1. hymenoptera at the default settings: wall time (target < 3 min on 2 cores).
2. safari (all 384 photos): gap near, transfer learning recommended.
3. digits (10,000 training images, validated on digits/val): gap far; the recommendation
   follows from the measured accuracies; then the recommended recipe is trained for real
   (`train --from-scratch` when that is the advice) and evaluated on digits/val, to compare
   with the accuracy advise predicted (target: within 3 points); wall time (target < 10
   min on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from common import parser


def cli(*args: str) -> tuple[dict, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "headstart", *map(str, args), "--json"],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: headstart {' '.join(map(str, args))}\n{r.stderr}")
    return json.loads(r.stdout), time.perf_counter() - t


def show(name: str, r: dict, wall: float) -> None:
    a, g = r["accuracy"], r["domain_gap"]
    expected = {k: round(o["predicted"], 4) for k, o in r["options"].items()}
    print(f"{name}: gap {g['level']} (distance {g['feature_distance']:.2f}, ImageNet "
          f"confidence {g['imagenet_max_prob']:.2f}); measured head {a['head_only']}, "
          f"fine-tuned {a['finetuned']}, scratch {a['from_scratch']}; expected with all "
          f"images {expected}; -> {r['recommendation']} ({r['predicted_accuracy']:.4f}, "
          f"interval {[round(v, 3) for v in r['interval']]}, too close to call with "
          f"{r['too_close_to_call']}); {wall / 60:.1f} min")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--digits-only", action="store_true")
    a = ap.parse_args()
    for name in () if a.digits_only else ("hymenoptera", "safari"):
        r, wall = cli("advise", a.datasets / name)
        show(name, r, wall)
    digits = a.datasets / "digits"
    r, wall = cli("advise", digits)
    show("digits", r, wall)
    flags = {"train from scratch": ["--from-scratch"],
             "head + fine-tune": ["--head", "linear", "--finetune", "all", "--augment", "none",
                                  "--backbone-lr-factor", "0.5"],
             }.get(r["recommendation"], [])
    with tempfile.TemporaryDirectory() as tmp:
        s, wall = cli("train", digits, "--out", f"{tmp}/m", *flags)
        m, _ = cli("evaluate", f"{tmp}/m", digits / "val")
    print(f"digits: train {' '.join(flags) or '(head only)'} -> {m['accuracy']:.4f} on "
          f"digits/val in {wall / 60:.1f} min; advise predicted {r['predicted_accuracy']:.4f} "
          f"(difference {100 * (m['accuracy'] - r['predicted_accuracy']):+.2f} points)")


if __name__ == "__main__":
    main()
