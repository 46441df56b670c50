"""One small registry class for everything registered by name (timm's ``_registry``, BasicSR's ``Registry``).

An entry is either the object itself or a ``"package.module:attribute"`` string imported on first :meth:`get`,
so that registering the built-in entries imports nothing heavy and does not depend on which module happened to
be imported first.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .suggest import suggest

__all__ = ["Registry"]


class Registry:
    """Names to objects of one ``kind`` (``"model family"``, ``"task"``, ...), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Any:
        """``register(name, obj)`` adds (or replaces) an entry and returns ``obj``; ``register(name)`` is the
        decorator form. ``obj`` may be a ``"package.module:attribute"`` string, imported on first use."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if obj is None:
            def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
                self._entries[name] = fn
                return fn

            return wrap
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> Any:
        """The object registered as ``name`` (a lazy entry is imported now and kept).

        Raises:
            ValueError: an unknown name; the message lists the registered names and the closest ones.
        """
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none'}."
                             f"{suggest(str(name), self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def names(self) -> List[str]:
        return list(self._entries)

    def items(self) -> Iterator[Tuple[str, Any]]:
        """``(name, object)`` pairs in registration order (lazy entries are imported)."""
        return ((name, self.get(name)) for name in list(self._entries))

    def unregister(self, name: str) -> Optional[Any]:
        """Remove ``name`` (tests and plugins that replace a built-in); returns what was there."""
        return self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
