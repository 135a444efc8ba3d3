"""Exceptions raised on bad user input.

Every error a user can cause (a wrong path, an unknown backbone, a folder with one class)
is a :class:`HeadstartError`; the CLI prints its message on one line and exits with
status 2. Anything else is a bug.

An error about a parameter carries it as fields: ``param`` (the library's name),
``expected`` and ``got``; other parameters its message mentions are written ``{name}`` in
``message`` and listed in ``mentions``. ``str(e)`` spells them as the library does
(``head: expected one of auto, linear, mlp, got 'svm'``); :meth:`HeadstartError.describe`
spells them as a caller wants (the CLI: ``--head: ...``), without parsing any text.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["HeadstartError", "DataError", "BackboneError", "ModelError", "PathError"]

_UNSET: Any = object()


class HeadstartError(Exception):
    """Base class of errors caused by user input; the message says what to do.

    Args:
        message: what went wrong and what to do; ``{name}`` marks a parameter named in
            ``mentions`` (spelled by :meth:`describe`).
        param: the parameter at fault, when there is one.
        expected: what that parameter must be (with ``got``, the value given).
        mentions: other parameters written ``{name}`` in ``message``.
    """

    def __init__(self, message: str = "", *, param: str | None = None,
                 expected: str | None = None, got: Any = _UNSET,
                 mentions: tuple[str, ...] = ()) -> None:
        self.message, self.param, self.expected = message, param, expected
        self.got = None if got is _UNSET else got
        self._has_got = got is not _UNSET
        self.mentions = tuple(mentions)
        super().__init__(self.describe())

    def describe(self, spell: Callable[[str], str] = str) -> str:
        """The message with every parameter written ``spell(name)``."""
        text = self.message.format(**{n: spell(n) for n in self.mentions}) \
            if self.mentions else self.message
        if self.expected is not None:
            got = f", got {self.got!r}" if self._has_got else ""
            text = f"expected {self.expected}{got}" + (f"; {text}" if text else "")
        return f"{spell(self.param)}: {text}" if self.param else text

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (Ray, DDP)
        return (_rebuild, (type(self), self.message, self.param, self.expected,
                           self._has_got, self.got, self.mentions))


def _rebuild(cls: type, message: str, param: str | None, expected: str | None,
             has_got: bool, got: Any, mentions: tuple[str, ...]) -> HeadstartError:
    return cls(message, param=param, expected=expected, got=got if has_got else _UNSET,
               mentions=mentions)


class DataError(HeadstartError, ValueError):
    """The images or labels cannot be used (missing path, fewer than 2 classes, ...)."""


class BackboneError(HeadstartError, ValueError):
    """The backbone is unknown or its weights cannot be loaded."""


class ModelError(HeadstartError, ValueError):
    """A model directory is missing, incomplete or not a headstart model."""


class PathError(HeadstartError, ValueError):
    """A path from a request, a CSV, a log or the command line that leaves the folder it
    belongs to, or names something other than what it should (a folder for a file, a named
    pipe or a device for an output, a NUL byte, a name over 255 bytes)."""
