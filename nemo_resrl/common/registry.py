"""A tiny name -> entry registry (as verl's ``core_algos`` registers advantage estimators and losses).

Algorithms are picked from config strings; registering a second, different function under a name that
is already taken raises instead of silently replacing the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F")


class Registry(Generic[F]):
    """Maps names to entries (functions, specs) of one kind (``kind`` is only used in error messages)."""

    def __init__(self, kind: str, names: set[str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}
        # the config layer's set of valid names for this registry (it validates config strings without
        # importing the entries): every registration adds its name there
        self._names = names

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: ``@REG.register("grpo")``. Re-registering the same function is a no-op."""

        def deco(fn: F) -> F:
            existing = self._entries.get(name)
            if existing is not None and existing is not fn:
                where = getattr(existing, "__qualname__", None)
                where = f"{existing.__module__}.{where}" if where else repr(existing)
                raise ValueError(f"{self.kind} {name!r} is already registered to {where}")
            self._entries[name] = fn
            if self._names is not None:
                self._names.add(name)
            return fn

        return deco

    def add(self, name: str, entry: F) -> F:
        """Register ``entry`` (any object: a function, a spec) under ``name``; same rules as ``register``."""
        return self.register(name)(entry)

    def get(self, name: str) -> F:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
