"""Exceptions raised on bad user input.

Every error a user can cause (a wrong path, an unknown backbone, a folder with one class)
is a :class:`HeadstartError`; the CLI prints its message on one line and exits with
status 2. Anything else is a bug.
"""

from __future__ import annotations

__all__ = ["HeadstartError", "DataError", "BackboneError", "ModelError", "PathError"]


class HeadstartError(Exception):
    """Base class of errors caused by user input; the message says what to do."""


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
