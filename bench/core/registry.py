"""Name -> entry registries filled by a decorator, timm's pattern. Every extension point of the
harness keeps one: pre-training methods and data sources, segmentation datasets and decoders,
backbones (archs) and checkpoint-import formats. Adding one is adding a module.

    METHODS = Registry("pre-training method")

    @METHODS.register              # a class registers under its `name` attribute
    class Flow(PretrainMethod):
        name = "flow"

    @BACKBONES.register_as("resnet18")   # anything else registers under a given name
    def _resnet18() -> BackboneSpec: ...

`describe(name)` is the entry's one-line description (for `bench list`): its `description`
attribute when it has one, else the first line of its docstring.
"""

from __future__ import annotations

import inspect
from typing import Callable, Generic, TypeVar

from bench.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, display: Callable[[str], str] = lambda name: name):
        self.what = what  # "pre-training method", "dataset", ...: the words of every message
        self._display = display  # how a name is listed (e.g. a prefix decoder as `mmseg:ARG`)
        self._entries: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: registers `cls` under `cls.name`."""
        return self.register_as(cls.name)(cls)

    def register_as(self, name: str) -> Callable[[T], T]:
        """Decorator registering any object (a class, a factory function, a layout) as `name`."""
        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        """The registered names as users write them, sorted."""
        return sorted(self.shown(n) for n in self._entries)

    def shown(self, name: str) -> str:
        """A registered name as users write it (e.g. the prefix decoder `mmseg:` as `mmseg:ARG`)."""
        return self._display(name)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, shown: str | None = None) -> T:
        """The entry registered as `name`; one line listing the choices when there is none."""
        if name not in self._entries:
            raise UserError(f"unknown {self.what} {shown or name!r}; available: {', '.join(self.names())}")
        return self._entries[name]

    def items(self):
        return self._entries.items()

    def describe(self, name: str) -> str:
        """One line about the entry: its `description`, else its docstring's first line."""
        entry = self.get(name)
        # The entry's own docstring only: a class would inherit its base class's, and an instance
        # (a format's Layout) would show its class's.
        if isinstance(entry, type):
            own_doc = entry.__dict__.get("__doc__")
        else:
            own_doc = entry.__doc__ if inspect.isfunction(entry) else None
        text = getattr(entry, "description", None) or inspect.cleandoc(own_doc or "")
        return text.strip().splitlines()[0].strip() if text.strip() else ""
