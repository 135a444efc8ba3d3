"""When should `--finetune auto` fine-tune, and when keep the result? (issue 31)

    python benchmarks/finetune_auto.py [--out benchmarks/finetune_auto.json] [--tasks a,b]
                                       [--summary]

For each task (a shared dataset, k training images per class, a held-out test split the
training never sees: the same splits as ``advice_truth.py``), trains

* the head only (``Classifier(head="auto")``), and
* the head then ``auto``'s fine-tuning run, forced to run and kept whatever it measures
  (``last-3``, the default learning rates and light augmentation, a fixed number of
  epochs with the last epoch's weights: the validation images choose nothing),

and records both test accuracies, both validation accuracies and whether the images are
far from ImageNet. ``--summary`` then chooses ``auto``'s rule from the JSON with a
leave-one-dataset-out protocol: for each dataset, the rule (images per class from which
to fine-tune, near and far; the validation margin the fine-tuned model must beat the
head by to be kept) that gains most test accuracy on the *other* datasets is applied to
it, and the gain over the head alone is reported beside the rule chosen on all of them.
Results are written after every run, so the script resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import time
from pathlib import Path

from advice_truth import split
from common import resumable

EPOCHS = 15
# name: (dataset, training images per class, test images per class)
TASKS = {
    "safari-20": ("safari", 20, 50), "safari-100": ("safari", 100, 50),
    "hymenoptera-20": ("hymenoptera", 20, 70), "hymenoptera-all": ("hymenoptera", 125, 70),
    "textures-20": ("textures", 20, 50), "textures-70": ("textures", 70, 50),
    "steel_defects-20": ("steel_defects", 20, 50),
    "steel_defects-100": ("steel_defects", 100, 50),
    "blood_cells-20": ("blood_cells", 20, 50), "blood_cells-100": ("blood_cells", 100, 50),
    "aerial-20": ("aerial", 20, 50), "aerial-100": ("aerial", 100, 50),
    "digits-20": ("digits", 20, 100), "digits-200": ("digits", 200, 100),
    "fashion_mnist-20": ("fashion_mnist", 20, 100),
    "fashion_mnist-100": ("fashion_mnist", 100, 100),
}
THRESHOLDS = (20, 50, 100, 200, math.inf)  # fine-tune from this many images per class
MARGINS = (0.0, 0.5, 1.0, 2.0)  # keep when the val gain exceeds this many standard errors


def accuracy(clf, test: list[str], labels: list[str]) -> float:
    proba = clf.predict_proba(test)
    return sum(clf.classes_[i] == t for i, t in zip(proba.argmax(1), labels)) / len(labels)


def run(csv: Path, test: list[str], labels: list[str], cache: Path) -> dict:
    """Head only and forced fine-tuning on ``csv``: test and validation accuracies."""
    from headstart import Classifier
    from headstart.fit.finetune import FinetuneConfig

    t = time.perf_counter()
    head = Classifier(head="auto", cache_dir=cache).fit(csv)
    cfg = FinetuneConfig(mode="last-3", max_epochs=EPOCHS, patience=EPOCHS,
                         restore_best=False, keep="finetuned")
    tuned = Classifier(head="auto", finetune="last-3", finetune_config=cfg,
                       cache_dir=cache).fit(csv)
    ft = tuned.summary_.finetune
    return {"head_test": accuracy(head, test, labels),
            "tuned_test": accuracy(tuned, test, labels),
            "head_val": ft.val_accuracy_head_only, "tuned_val": ft.val_accuracy_finetuned,
            "val_images": ft.val_images, "per_class": min(head.summary_.train_counts.values()),
            "far": head.summary_.domain_gap.level == "far",
            "seconds": round(time.perf_counter() - t, 1)}


def gain(rule: tuple[float, float, float], e: dict) -> float:
    """Test accuracy of ``auto`` under ``rule`` (near, far, margin) minus the head's."""
    from headstart.fit.finetune import clear_gain

    near, far, z = rule
    if e["per_class"] < (far if e["far"] else near):
        return 0.0
    kept = z < 0 or clear_gain(e["head_val"], e["tuned_val"], e["val_images"], z)[0]
    return e["tuned_test"] - e["head_test"] if kept else 0.0


def best_rule(entries: list[dict]) -> tuple[float, float, float]:
    """The rule with the highest mean gain on ``entries`` (ties: fine-tune less)."""
    rules = list(itertools.product(THRESHOLDS, THRESHOLDS, MARGINS))
    return max(rules, key=lambda r: (sum(gain(r, e) for e in entries), r[0], r[1], r[2]))


def summary(results: dict) -> None:
    """The table, the rule chosen on all tasks, and its leave-one-dataset-out check."""
    print(f"{'task':20s} {'far':>4s} {'head':>6s} {'tuned':>6s} {'h val':>6s} {'t val':>6s}")
    for task, e in results.items():
        print(f"{task:20s} {'far' if e['far'] else '':>4s} {e['head_test']:6.3f} "
              f"{e['tuned_test']:6.3f} {e['head_val']:6.3f} {e['tuned_val']:6.3f}")
    entries = list(results.items())
    rule = best_rule([e for _, e in entries])
    print(f"chosen on all: near >= {rule[0]}, far >= {rule[1]}, margin {rule[2]} SE: "
          f"mean gain {100 * sum(gain(rule, e) for _, e in entries) / len(entries):+.2f} "
          "points; always fine-tune and keep: "
          f"{100 * sum(gain((0, 0, -9), e) for _, e in entries) / len(entries):+.2f}")
    out = []
    for ds in sorted({TASKS[t][0] for t, _ in entries}):
        r = best_rule([e for t, e in entries if TASKS[t][0] != ds])
        gains = [gain(r, e) for t, e in entries if TASKS[t][0] == ds]
        out += gains
        print(f"  held out {ds:14s} rule {r}: gain {100 * sum(gains) / len(gains):+.2f}")
    print(f"leave-one-dataset-out mean gain {100 * sum(out) / len(out):+.2f} points "
          f"over {len(out)} tasks")


def main() -> None:
    a, tasks, results = resumable(__doc__, "finetune_auto.json", TASKS)
    if a.summary:
        summary(results)
        return
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for task in tasks:
            if task in results:
                continue
            csv, test, labels = split(a.datasets, task, TASKS[task], tmp)
            results[task] = run(csv, test, labels, tmp / "cache")
            a.out.write_text(json.dumps(results, indent=1))
            print(task, results[task], flush=True)
    summary(results)


if __name__ == "__main__":
    main()
