"""What ``Classifier.fit`` reports while it runs: one list of callbacks with named events.

Events, in order (``logs``: a small dict of what the event knows):

* ``on_stage_begin(name, logs)`` / ``on_stage_end(name, logs)`` around each stage of
  :mod:`headstart.fit.stages` (``read_data``, ``domain_gap``, ``fit_head``, ``finetune``,
  ``quantize``, ``calibrate``; from scratch: ``read_data``, ``scratch``, ``calibrate``);
  ``on_stage_end`` logs hold ``seconds``.
* ``on_progress(done, total)`` while images are read (feature extraction).
* ``on_epoch_end(epoch, logs)`` after each fine-tuning or from-scratch epoch (``logs``:
  ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``).

Subclass :class:`Callback` and override what you need, or pass two functions as
:class:`Callbacks` (``progress``, ``epoch``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from ..errors import HeadstartError

__all__ = ["Callback", "CallbackList", "Callbacks", "Stopwatch"]

ProgressFn = Callable[[int, int], None]
EpochFn = Callable[[dict[str, float]], None]


class Callback:
    """The events ``fit`` sends; every method does nothing unless overridden."""

    def on_stage_begin(self, name: str, logs: dict[str, Any]) -> None:
        """A stage starts."""

    def on_stage_end(self, name: str, logs: dict[str, Any]) -> None:
        """A stage ended (``logs["seconds"]``: how long it took)."""

    def on_progress(self, done: int, total: int) -> None:
        """``done`` of ``total`` images read."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """A fine-tuning or from-scratch epoch ended."""


class Callbacks(Callback):
    """Two functions as a callback: ``progress(done, total)`` during feature extraction,
    ``epoch(row)`` after each fine-tuning or from-scratch epoch (``row``: the epoch's
    ``logs``)."""

    def __init__(self, progress: ProgressFn | None = None, epoch: EpochFn | None = None
                 ) -> None:
        self.progress, self.epoch = progress, epoch

    def on_progress(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.epoch is not None:
            self.epoch(logs)


class Stopwatch(Callback):
    """Seconds per stage (``laps``), from the stage events."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}

    def on_stage_end(self, name: str, logs: dict[str, Any]) -> None:
        self.laps[name] = round(self.laps.get(name, 0.0) + logs["seconds"], 3)


class CallbackList(Callback):
    """Callbacks in one list, each event sent to every one in order; :meth:`stage` times a
    stage and sends its begin and end events; :attr:`progress` and :attr:`epoch` are the
    plain functions lower layers take."""

    def __init__(self, callbacks: Callback | Iterable[Callback] | None = None) -> None:
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        self.callbacks: list[Callback] = list(callbacks)
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise HeadstartError(param="callbacks", expected="headstart Callback objects",
                                     got=type(c).__name__)

    def on_stage_begin(self, name: str, logs: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_stage_begin(name, logs)

    def on_stage_end(self, name: str, logs: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_stage_end(name, logs)

    def on_progress(self, done: int, total: int) -> None:
        for c in self.callbacks:
            c.on_progress(done, total)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(epoch, logs)

    def progress(self, done: int, total: int) -> None:
        self.on_progress(done, total)

    def epoch(self, logs: dict[str, float]) -> None:
        self.on_epoch_end(int(logs.get("epoch", 0)), logs)

    def stage(self, name: str) -> "_Stage":
        """``with callbacks.stage("fit_head"): ...`` sends the stage's events."""
        return _Stage(self, name)


class _Stage:
    def __init__(self, callbacks: CallbackList, name: str) -> None:
        self.callbacks, self.name = callbacks, name

    def __enter__(self) -> "_Stage":
        self.t0 = time.perf_counter()
        self.callbacks.on_stage_begin(self.name, {})
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:  # a failed stage ends with its exception, not an event
            self.callbacks.on_stage_end(self.name,
                                        {"seconds": time.perf_counter() - self.t0})
