"""A name -> constructor registry with helpful errors, used for datasets, shifts, models and strategies."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry lookup fails; the message lists close matches and the choices."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry(Generic[T]):
    name: str
    value: T
    description: str = ""


@dataclass
class Registry(Generic[T]):
    """Maps names to constructors.  ``kind`` names what is registered ("dataset", "shift", ...)."""

    kind: str
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def decorator(value: T) -> T:
            self.add(name, value, description)
            return value

        return decorator

    def add(self, name: str, value: T, description: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not description:
            doc = getattr(value, "__doc__", None) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, value, description)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].value
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Choose one of: {', '.join(names)}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def describe(self) -> str:
        """One line per entry: name and one-line description (what the CLI `list` commands print)."""
        width = max((len(n) for n in self._entries), default=0)
        return "\n".join(f"{e.name:<{width}}  {e.description}" for e in self.entries())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def close_matches(name: str, choices: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.5)


__all__ = ["Registry", "Entry", "UnknownNameError", "close_matches"]

