"""Pre-training methods. Each module of this package registers one method with
`@register_method`; importing the package imports them all, so adding a method is adding a file."""

from __future__ import annotations

import importlib
import pkgutil

from pretrain.methods.base import (  # noqa: F401  (the package's public interface)
    MethodOptions, PretrainMethod, list_methods, method_class, options_help, parse_options, register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
