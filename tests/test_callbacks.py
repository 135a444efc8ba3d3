"""One list of callbacks with named events, sent by a real fit."""

from __future__ import annotations

import pytest

from headstart import Callback, Callbacks, Classifier, HeadstartError


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_stage_begin(self, name, logs):
        self.events.append(("begin", name))

    def on_stage_end(self, name, logs):
        self.events.append(("end", name, logs["seconds"] >= 0))

    def on_progress(self, done, total):
        self.events.append(("progress", done, total))


@pytest.mark.slow
def test_fit_sends_stage_and_progress_events_to_every_callback(small_data):
    first, seen = Recorder(), []
    clf = Classifier(head="linear").fit(small_data, callbacks=[
        first, Callbacks(progress=lambda d, t: seen.append((d, t)))])
    stages = [e[1] for e in first.events if e[0] == "begin"]
    assert stages == ["read_data", "fit_head", "calibrate"]
    assert [e for e in first.events if e[0] == "end"] == [("end", s, True) for s in stages]
    assert seen and seen[-1] == (12, 12)
    assert [e[1:] for e in first.events if e[0] == "progress"] == seen
    assert set(clf.summary_.timings) == {"read_data", "fit_head", "calibrate"}


def test_callbacks_must_be_callbacks(small_data):
    with pytest.raises(HeadstartError, match="^callbacks: expected headstart Callback"):
        Classifier().fit(small_data, callbacks=[print])
