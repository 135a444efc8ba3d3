"""Does `advise` name what would really have won? (issue 31)

    python benchmarks/advice_truth.py [--out benchmarks/advice_truth.json] [--tasks a,b]
                                      [--datasets ../shared/datasets] [--summary]

For each task (a shared dataset, k training images per class, a held-out test split the
training never sees), trains the three options to convergence with generous budgets and
scores each on the test images:

* head only: `Classifier(head="auto")`;
* fine-tuning: `last-3` (`all` where `advise` finds the images far from ImageNet), no
  augmentation, up to 30 epochs, early stopping after 6 without improvement, the fine-tuned
  model kept whatever its validation accuracy;
* from scratch: `resnet10t`, up to 60 epochs, early stopping after 10.

then runs `advise` at its default settings on the same training images, and compares:
does it name the option that measured best (ties within 1 point count as either), is its
predicted accuracy for what it recommends within 3 points of that option's test
accuracy, and does it ever recommend transfer learning where from-scratch wins by more
than 5 points (or the reverse)?

Results go to `--out` (JSON, one entry per task and option), written after every run, so
the script resumes where it stopped: a finished entry is never run again. `--summary`
prints the table from the JSON without training. Runs on a GPU where one is available
(Lightning picks it); on 2 CPU cores the largest tasks take tens of minutes each.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import resumable

OPTIONS = ("head only", "head + fine-tune", "train from scratch")

# name: (dataset, training images per class, test images per class); smallest first.
# Sets with train/val folders test on their val folder; the others on images after the
# first `k` of each class (by name).
TASKS = {
    "safari-20": ("safari", 20, 50),
    "hymenoptera-20": ("hymenoptera", 20, 70),
    "textures-20": ("textures", 20, 50),
    "steel_defects-20": ("steel_defects", 20, 50),
    "blood_cells-20": ("blood_cells", 20, 50),
    "aerial-20": ("aerial", 20, 50),
    "digits-20": ("digits", 20, 100),
    "hymenoptera-all": ("hymenoptera", 125, 70),
    "aerial-100": ("aerial", 100, 50),
    "blood_cells-100": ("blood_cells", 100, 50),
    "steel_defects-100": ("steel_defects", 100, 50),
    "textures-70": ("textures", 70, 50),
    "fashion_mnist-100": ("fashion_mnist", 100, 100),
    "digits-200": ("digits", 200, 100),
    "fashion_mnist-500": ("fashion_mnist", 500, 100),
    "digits-1000": ("digits", 1000, 200),
}


def split(datasets: Path, task: str, spec: tuple[str, int, int], folder: Path
          ) -> tuple[Path, list[str], list[str]]:
    """``(train.csv, test paths, test labels)`` for ``task`` in ``folder``; ``spec``:
    (dataset, training images per class, test images per class)."""
    name, k, n_test = spec
    root = datasets / name
    train_root = root / "train" if (root / "train").is_dir() else root
    rows, test, labels = ["path,label"], [], []
    for cls in sorted(p.name for p in train_root.iterdir() if p.is_dir()):
        files = sorted(f for f in (train_root / cls).iterdir() if f.is_file())
        rows += [f"{f},{cls}" for f in files[:k]]
        rest = sorted((root / "val" / cls).iterdir()) if (root / "val").is_dir() else files[k:]
        test += [str(f) for f in rest[:n_test]]
        labels += [cls] * len(rest[:n_test])
    csv = folder / f"{task}.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv, test, labels


def truth(option: str, csv: Path, test: list[str], labels: list[str], far: bool,
          cache: Path) -> dict:
    """Train ``option`` to convergence on ``csv``; its test accuracy."""
    from headstart import Classifier
    from headstart.fit.finetune import FinetuneConfig

    t = time.perf_counter()
    if option == "head only":
        clf = Classifier(head="auto", cache_dir=cache)
    elif option == "head + fine-tune":
        mode = "all" if far else "last-3"
        clf = Classifier(head="linear", finetune=mode, cache_dir=cache, finetune_config=(
            FinetuneConfig(mode=mode, augment="none", max_epochs=30, patience=6,
                           keep="finetuned", backbone_lr_factor=0.5 if far else 0.1)))
    else:
        clf = Classifier(from_scratch=True, cache_dir=cache, finetune_config=FinetuneConfig(
            max_epochs=60, patience=10, lr=3e-3, augment="none"))
    clf.fit(csv)
    proba = clf.predict_proba(test)
    predicted = [clf.classes_[i] for i in proba.argmax(1)]
    acc = sum(p == t_ for p, t_ in zip(predicted, labels)) / len(labels)
    return {"test_accuracy": acc, "val_accuracy": clf.summary_.val_accuracy,
            "seconds": round(time.perf_counter() - t, 1)}


def advice(csv: Path, cache: Path) -> dict:
    """`advise` at its default settings on the training images."""
    from headstart.insight.advise import advise

    r = advise(csv, cache_dir=cache)
    return {k: r[k] for k in ("recommendation", "predicted_accuracy", "interval",
                              "too_close_to_call", "seconds", "accuracy")} | {
        "far": r["domain_gap"]["level"] == "far",
        "predicted": {k: o["predicted"] for k, o in r["options"].items()}}


def judge(entry: dict) -> dict | None:
    """Right option (1-point ties), prediction within 3 points, no 5-point blunder."""
    if "advise" not in entry or not all(o in entry for o in OPTIONS):
        return None
    acc = {o: entry[o]["test_accuracy"] for o in OPTIONS}
    best = max(acc.values())
    rec = entry["advise"]["recommendation"]
    transfer = max(acc["head only"], acc["head + fine-tune"])
    blunder = (rec != "train from scratch" and acc["train from scratch"] > transfer + 0.05) or \
        (rec == "train from scratch" and acc["train from scratch"] < transfer - 0.05)
    return {"best": max(acc, key=acc.get), "right": acc[rec] >= best - 0.01,
            "error": entry["advise"]["predicted_accuracy"] - acc[rec], "blunder": blunder}


def summary(results: dict) -> None:
    """The table and the acceptance counts."""
    print(f"{'task':20s} {'head':>6s} {'tune':>6s} {'scratch':>7s}  {'advise':20s} "
          f"{'predicted':>9s} {'right':>5s} {'error':>6s}")
    judged = []
    for task, e in results.items():
        acc = [e.get(o, {}).get("test_accuracy") for o in OPTIONS]
        cells = [f"{a:.3f}" if a is not None else "  -  " for a in acc]
        j = judge(e)
        a = e.get("advise", {})
        print(f"{task:20s} {cells[0]:>6s} {cells[1]:>6s} {cells[2]:>7s}  "
              f"{a.get('recommendation', '-'):20s} "
              f"{a.get('predicted_accuracy', float('nan')):9.3f} "
              f"{str(j['right']) if j else '-':>5s} "
              f"{j['error'] if j else float('nan'):+6.3f}")
        if j:
            judged.append(j)
    if judged:
        print(f"right option {sum(j['right'] for j in judged)}/{len(judged)}; predicted "
              f"within 3 points {sum(abs(j['error']) <= 0.03 for j in judged)}/{len(judged)}; "
              f"5-point blunders {sum(j['blunder'] for j in judged)}")


def main() -> None:
    a, tasks, results = resumable(__doc__, "advice_truth.json", TASKS)
    if a.summary:
        summary(results)
        return
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for task in tasks:
            entry = results.setdefault(task, {})
            csv, test, labels = split(a.datasets, task, TASKS[task], tmp)
            cache = tmp / "cache"
            if "advise" not in entry:
                entry["advise"] = advice(csv, cache)
                a.out.write_text(json.dumps(results, indent=1))
            for option in OPTIONS:
                if option not in entry:
                    entry[option] = truth(option, csv, test, labels, entry["advise"]["far"],
                                          cache)
                    a.out.write_text(json.dumps(results, indent=1))
                    print(task, option, entry[option], flush=True)
    summary(results)


if __name__ == "__main__":
    main()
