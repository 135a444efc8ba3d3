"""The studio's training process: ``python -m headstart.studio.worker PROJECT RUN`` reads
its settings as JSON on stdin (``head``, ``finetune``, ``epochs``, ``augment``, ``int8``,
``unlabelled``: learn from ``PROJECT/unlabelled`` too, and ``snapshot``: the CSV of
the images present when Train was clicked), trains into ``PROJECT/models/RUN`` (atomically,
with its report) and prints its progress as JSON lines on stdout: ``stage`` ``begin`` /
``end`` with the stage's ``name``, ``features`` with ``done``/``total``, ``epoch`` with the
epoch's figures, then ``done`` with the validation accuracy, or ``error`` with a message."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import HeadstartError
from ..fit.callbacks import Callback


def _say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event, default=float) + "\n")
    sys.stdout.flush()


class Reporter(Callback):
    """Every training event as one JSON line (feature progress at most every 8 images)."""

    def __init__(self) -> None:
        self.last = -1

    def on_stage_begin(self, name: str, logs: dict[str, Any]) -> None:
        _say(stage="begin", name=name)

    def on_stage_end(self, name: str, logs: dict[str, Any]) -> None:
        _say(stage="end", name=name)

    def on_progress(self, done: int, total: int) -> None:
        if done == total or done - self.last >= 8:
            self.last = done
            _say(stage="features", done=done, total=total)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        _say(**{**logs, "stage": "epoch", "epoch": epoch})


def main(project: str, run: str, settings: dict[str, Any]) -> int:
    from ..fit.classifier import Classifier
    from ..fit.finetune import FinetuneConfig
    from ..insight.report import write_model_report

    root = Path(project)
    try:
        cfg = FinetuneConfig(max_epochs=int(settings.get("epochs") or FinetuneConfig.max_epochs),
                             augment=str(settings.get("augment") or FinetuneConfig.augment))
        clf = Classifier(head=settings.get("head", "auto"),
                         finetune=settings.get("finetune", "off"), finetune_config=cfg,
                         int8=bool(settings.get("int8", False)))
        pile = root / "unlabelled"
        use_pile = settings.get("unlabelled") and pile.is_dir() and any(pile.iterdir())
        clf.fit(settings.get("snapshot") or root / "data", callbacks=Reporter(),
                unlabelled=pile if use_pile else None)
        out = root / "models" / run
        clf.save(out, extra=lambda folder: write_model_report(clf, folder, run))
        s = clf.summary_
        _say(stage="done", run=run, val_accuracy=s.val_accuracy, val_images=s.val_images,
             val_source=s.val_source, head=s.head, seconds=s.seconds,
             unlabelled=s.to_dict().get("unlabelled"))
        return 0
    except HeadstartError as e:
        _say(stage="error", message=str(e))
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: said on the page, its trace in the log
        import traceback

        traceback.print_exc()
        _say(stage="error", message=f"internal error ({type(e).__name__}: {e}); the details "
                                    f"are in {root / '.snapshots' / (run + '.log')}")
        return 1


if __name__ == "__main__":
    code = main(sys.argv[1], sys.argv[2], json.loads(sys.stdin.read() or "{}"))
    sys.stdout.flush()
    os._exit(code)  # everything is saved: skip the slow teardown of engine threads
