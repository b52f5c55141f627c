"""Encoders from user code: arch `entry:MODULE:FUNCTION` (`bench submit --entry`).

For an architecture the registry does not have, and that a user does not want to add to it:
`FUNCTION()` in the importable `MODULE` returns an `nn.Module` whose `forward(x)` returns a list
of N×C×h×w feature maps, finest first. `channels` and `strides` are read from the module when it
sets them, and otherwise measured with one forward pass on a 64×64 input; `normalization`
defaults to ImageNet's. The module is imported in every process that builds the encoder (cells
included), so it must be importable there (installed, or on PYTHONPATH).

This runs the user's own code on purpose -- unlike weight files, which are never unpickled.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from bench.core.errors import UserError

PREFIX = "entry:"


def is_entry(arch: str) -> bool:
    return arch.startswith(PREFIX)


def entry_encoder(arch: str, mean, std, **overrides) -> nn.Module:
    target = arch[len(PREFIX):]
    module_name, sep, function_name = target.partition(":")
    if not sep or not module_name or not function_name:
        raise UserError(f"arch {arch!r}: expected entry:MODULE:FUNCTION (e.g. entry:my_pkg.nets:encoder)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"arch {arch!r}: cannot import {module_name} ({exc}); install it or add it to PYTHONPATH") \
            from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"arch {arch!r}: {module_name} has no function {function_name}")
    if overrides:
        raise UserError(f"arch {arch!r}: this decoder needs encoder options {sorted(overrides)}, which entry "
                        f"encoders do not take; use a decoder without them")
    model = function()
    if not isinstance(model, nn.Module):
        raise UserError(f"arch {arch!r}: {function_name}() returned {type(model).__name__}, not a torch nn.Module")
    model.arch = arch
    if not (hasattr(model, "channels") and hasattr(model, "strides")):
        model.channels, model.strides = _measure(model, arch)
    model.channels, model.strides = list(model.channels), list(model.strides)
    if not hasattr(model, "normalization"):
        model.normalization = {"mean": list(mean), "std": list(std)}
    return model


def _measure(model: nn.Module, arch: str) -> tuple[list[int], list[int]]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 64))
    except Exception as exc:  # noqa: BLE001 -- user code: any failure is the same user problem
        raise UserError(f"arch {arch!r}: forward on a 1x3x64x64 input failed ({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, (list, tuple)) or not out or not all(isinstance(t, torch.Tensor) and t.dim() == 4
                                                                  for t in out):
        raise UserError(f"arch {arch!r}: forward must return a list of N×C×h×w feature maps")
    return [t.shape[1] for t in out], [max(1, round(64 / t.shape[-1])) for t in out]
