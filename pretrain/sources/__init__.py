"""Pre-training datasets. Each module of this package registers one source with
`@register_source`; importing the package imports them all."""

from __future__ import annotations

import importlib
import pkgutil

from pretrain.sources.base import KINDS, PretrainSource, list_sources, open_source, register_source  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
