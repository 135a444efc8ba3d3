"""The one registry every extension point uses, and errors that carry their parameter."""

from __future__ import annotations

import pickle

import pytest

from headstart.errors import DataError, HeadstartError, ModelError
from headstart.registry import Registry


def test_registry_names_gets_and_refuses_by_name():
    reg: Registry[str] = Registry("thing", "headstart.no-such-group", name_of=lambda s: s)
    reg.register("a")
    reg.register("b")
    assert reg.names() == ("a", "b") and "a" in reg and "c" not in reg and list(reg) == ["a", "b"]
    with pytest.raises(HeadstartError) as e:
        reg.get("c", param="kind")
    assert (e.value.param, e.value.got) == ("kind", "c")
    assert str(e.value) == "kind: expected one of a, b, got 'c'"
    with pytest.raises(ModelError, match="no installed thing 'c'"):
        reg.get("c", error=ModelError)


def test_a_wrong_entry_is_refused_and_a_broken_plugin_only_warns(caplog):
    from headstart.heads import HEAD_KINDS

    with pytest.raises(TypeError, match="Head subclass"):
        HEAD_KINDS.register(object)
    reg: Registry[str] = Registry("thing", "console_scripts", name_of=str,
                                  check=lambda e: (_ for _ in ()).throw(TypeError("no")))
    assert reg.names() == ()  # every console script refused by the check: warnings only
    assert "plugin" in caplog.text


def test_errors_carry_param_expected_got_and_survive_pickling():
    e = DataError(param="val_fraction", expected="a number in (0, 1)", got=2)
    assert str(e) == "val_fraction: expected a number in (0, 1), got 2"
    assert e.describe(lambda p: "--" + p) == "--val_fraction: expected a number in (0, 1), got 2"
    again = pickle.loads(pickle.dumps(e))  # across processes (Ray, DDP)
    assert type(again) is DataError and (again.param, again.expected, again.got) == \
        ("val_fraction", "a number in (0, 1)", 2)
    plain = HeadstartError("no model yet")
    assert str(plain) == "no model yet" and plain.param is None
    assert str(pickle.loads(pickle.dumps(plain))) == "no model yet"
