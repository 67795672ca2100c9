"""A tiny name -> object registry with did-you-mean errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import MedclsError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise with close matches and the valid options."""

    def __init__(self, kind: str, error: type[MedclsError] = MedclsError) -> None:
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            options = ", ".join(sorted(self._items))
            raise self.error(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._items)} "
                f"Available: {options}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, str]]:
        """(name, one-line help) pairs, sorted by name."""
        return [(k, self._help[k]) for k in sorted(self._items)]
