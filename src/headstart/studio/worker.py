"""The studio's training process: ``python -m headstart.studio.worker PROJECT RUN
SETTINGS_JSON`` trains on ``PROJECT/data`` into ``PROJECT/models/RUN`` (atomically, with
its report) and prints its progress as JSON lines on stdout (``stage``: ``features``
with ``done``/``total``, ``epoch`` with the epoch's figures, then ``done`` with the
validation accuracy, or ``error`` with a message)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import HeadstartError


def _say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event, default=float) + "\n")
    sys.stdout.flush()


def main(project: str, run: str, settings: dict[str, Any]) -> int:
    from ..fit.classifier import Classifier
    from ..insight.report import write_model_report
    from ..fit.callbacks import Callbacks

    root = Path(project)
    try:
        clf = Classifier(head=settings.get("head", "auto"),
                         finetune=settings.get("finetune", "off"),
                         int8=bool(settings.get("int8", False)))
        last = [-1]

        def progress(done: int, total: int) -> None:
            if done == total or done - last[0] >= 8:
                last[0] = done
                _say(stage="features", done=done, total=total)
        clf.fit(root / "data", callbacks=Callbacks(progress, lambda e: _say(stage="epoch",
                                                                           **e)))
        out = root / "models" / run
        clf.save(out, extra=lambda folder: write_model_report(clf, folder, run))
        s = clf.summary_
        _say(stage="done", run=run, val_accuracy=s.val_accuracy, val_images=s.val_images,
             val_source=s.val_source, head=s.head, seconds=s.seconds)
        return 0
    except HeadstartError as e:
        _say(stage="error", message=str(e))
        return 2


if __name__ == "__main__":
    code = main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
    sys.stdout.flush()
    os._exit(code)  # everything is saved: skip the slow teardown of engine threads
