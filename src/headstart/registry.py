"""One registry per way of extending headstart: head kinds, export formats, backbone
families.

Each registry holds the package's own entries (registered explicitly by the module that
defines the extension point) and those of installed plugins: a distribution declares an
entry point in the registry's group, e.g. in its ``pyproject.toml``::

    [project.entry-points."headstart.heads"]
    prototype = "my_plugin:PrototypeHead"

The entry points of a group are loaded the first time the registry is asked for its
names or for an entry it does not hold. A model file names kinds; it never causes an
import: a name that no installed plugin provides is refused with an error naming it.
Everything that lists choices (bundle validation, the CLI's help and choices, the
studio's selects, the README) reads the registry.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Callable, Generic, Iterator, TypeVar

from .errors import HeadstartError

__all__ = ["Registry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one extension point.

    Args:
        what: what an entry is, for messages (``head kind``).
        group: the entry-point group plugins register in (``headstart.heads``).
        name_of: an entry's name (entries registered from a plugin are named by it).
        check: raises ``TypeError`` for an object that is not an entry of this kind.
    """

    def __init__(self, what: str, group: str, name_of: Callable[[T], str],
                 check: Callable[[object], None] | None = None) -> None:
        self.what, self.group = what, group
        self._name_of, self._check = name_of, check
        self._entries: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, entry: T) -> T:
        """Add ``entry`` under its name (replacing one of the same name); returns it, so
        that it can decorate a class."""
        if self._check is not None:
            self._check(entry)
        self._entries[self._name_of(entry)] = entry
        return entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name in self._entries:
                continue  # the package's own entries are not replaced by a plugin's
            try:
                self.register(ep.load())
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break headstart
                logger.warning("%s plugin %r (%s) not loaded: %s: %s", self.what, ep.name,
                               ep.value, type(e).__name__, e)

    def names(self) -> tuple[str, ...]:
        """Every registered name, the package's own first, in registration order."""
        self._load_plugins()
        return tuple(self._entries)

    def get(self, name: str, param: str | None = None,
            error: type[HeadstartError] = HeadstartError) -> T:
        """The entry called ``name``.

        Raises:
            ``error``: no installed entry has that name (the message names it and lists the
                installed ones; ``param``: the parameter that gave it).
        """
        if name not in self._entries:
            self._load_plugins()
        if not isinstance(name, str) or name not in self._entries:
            raise error(param=param, expected=f"one of {', '.join(self._entries)}", got=name) \
                if param else error(f"no installed {self.what} {name!r} (installed: "
                                    f"{', '.join(self._entries)}; a plugin may provide it)")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[T]:
        return iter([self._entries[n] for n in self.names()])
