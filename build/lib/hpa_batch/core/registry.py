"""A named registry of factories: the one mechanism behind every pluggable part chosen by a string in
the config (segmentation backends, learning-rate schedules), as timm registers its models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories of ``kind`` objects by name.

    Parameters
    ----------
    kind : str
        What is registered (for error messages), e.g. ``"segmentation backend"``.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator adding a factory (a function or a class) under ``name``."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def create(self, name: str, **kwargs: object) -> T:
        """Call the factory registered under ``name`` with ``kwargs``.

        Raises
        ------
        ValueError
            Unknown name; the message lists the known ones.
        """
        try:
            factory = self._factories[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {self.names()}") from None
        return factory(**kwargs)
