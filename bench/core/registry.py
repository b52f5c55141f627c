"""Name -> class registries filled by a decorator, timm's pattern: pre-training methods and data
sources, segmentation datasets and decoders each keep one, so adding one is adding a module."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from bench.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, display: Callable[[str], str] = lambda name: name):
        self.what = what  # "pre-training method", "dataset", ...: the words of every message
        self._display = display  # how a name is listed (e.g. a prefix decoder as `mmseg:ARG`)
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: registers `cls` under `cls.name`."""
        if cls.name in self._classes:
            raise ValueError(f"{self.what} {cls.name!r} registered twice")
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self._display(n) for n in self._classes)

    def get(self, name: str, shown: str | None = None) -> type[T]:
        """The class registered as `name`; one line listing the choices when there is none."""
        if name not in self._classes:
            raise UserError(f"unknown {self.what} {shown or name!r}; available: {', '.join(self.names())}")
        return self._classes[name]

    def items(self):
        return self._classes.items()
