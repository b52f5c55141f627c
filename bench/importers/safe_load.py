"""Reading foreign weight files without ever executing code from them.

- `.safetensors` files are read with `safetensors` (a header and raw bytes: nothing to execute).
- Every other file goes through `torch.load(..., weights_only=True)`: PyTorch's restricted
  unpickler, which builds tensors, containers and plain Python values only. One class is added to
  its allow-list, `argparse.Namespace`, because DINO, MAE and DeiT training checkpoints store their
  command line in one; building it sets attributes and runs no code. Anything else that needs a
  Python object (a pickled `nn.Module`, a `__reduce__` payload) is refused with one line and is
  never unpickled another way.

`unwrap` then turns the loaded container into a flat name -> tensor dict: training checkpoints nest
the weights under `state_dict`, `model`, `model_state_dict`, `teacher`, ... next to optimiser
state and counters.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from bench.core.errors import UserError

# Allow-listed for weights_only loading: argparse.Namespace only (see the module docstring).
SAFE_GLOBALS = [argparse.Namespace]

# Containers that hold the weights, in the order they are preferred. DINO saves `teacher` and
# `student`: the teacher (the EMA network) is the one DINO evaluates and releases.
WRAPPERS = ("teacher", "model_state_dict", "state_dict", "model", "module", "net", "network", "student")

CONVERT_ADVICE = ("re-save just its tensors where you trust the file (safetensors.torch.save_file(state_dict, "
                  "'weights.safetensors')) and run `bench convert` on that")


def _looks_like_safetensors(path: Path) -> bool:
    """An 8-byte little-endian header length followed by a JSON object: safetensors' layout."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < size


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the metadata block of a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    return tensors, meta


def safetensors_metadata(path: Path) -> dict | None:
    """The metadata block of a safetensors file, or None when `path` is not one."""
    if not (path.suffix == ".safetensors" or _looks_like_safetensors(path)):
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        if path.suffix == ".safetensors":
            raise UserError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _refusal_reason(exc: Exception) -> str:
    """What the restricted unpickler objected to, e.g. `GLOBAL builtins.exec`."""
    text = str(exc)
    m = re.search(r"Unsupported global: (GLOBAL [\w.]+)", text)
    if m:
        return m.group(1)
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return (m.group(1).strip() if m else _first_line(exc))[:160]


def load_file(path: Path):
    """The object stored in a weights file, read safely (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return read_safetensors(path)[0]
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise UserError(f"{path}: refused, it needs Python objects beyond tensors to unpickle "
                            f"({_refusal_reason(exc)}) and is never unpickled unsafely; {CONVERT_ADVICE}") from None
        # Not a zip and not a pickle the restricted unpickler can follow: garbage, or an exotic stream.
        raise UserError(f"{path}: not a readable PyTorch weights file (the restricted unpickler stops at: "
                        f"{_refusal_reason(exc)}); {CONVERT_ADVICE}") from None
    except Exception as exc:  # noqa: BLE001 -- zip/stream errors of a truncated or foreign file: one user problem
        raise UserError(f"{path}: not a readable PyTorch weights file ({_first_line(exc)})") from None


def _tensor_count(d: dict) -> int:
    return sum(isinstance(v, torch.Tensor) for v in d.values())


def unwrap(obj, path: Path) -> tuple[dict[str, torch.Tensor], dict, list[str], list[str]]:
    """(tensors, plain values next to them, wrappers opened, notes) of a loaded weights object.

    A level holding no tensor is a training checkpoint: open the preferred wrapper (`WRAPPERS`),
    or its only dict that holds tensors. Nested dicts below the weights level are flattened with
    dots, as `nn.Module.state_dict` would name them."""
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors; {CONVERT_ADVICE}")
    opened: list[str] = []
    notes: list[str] = []
    while _tensor_count(obj) == 0:
        candidates = [k for k in WRAPPERS if isinstance(obj.get(k), dict)]
        if not candidates:
            candidates = [k for k, v in obj.items() if isinstance(v, dict) and _holds_tensors(v)]
            if len(candidates) != 1:
                entries = ", ".join(map(str, list(obj)[:8]))
                raise UserError(f"{path}: no weights found (top-level entries: {entries}); "
                                f"expected a state dict, or one under state_dict / model / teacher")
        key = candidates[0]
        others = [str(k) for k in obj if k != key]
        if others:
            notes.append(f"used the '{key}' entry; ignored {', '.join(others[:6])}{' ...' if len(others) > 6 else ''}")
        opened.append(str(key))
        obj = obj[key]
    tensors: dict[str, torch.Tensor] = {}
    values: dict = {}
    _flatten(obj, "", tensors, values)
    return tensors, values, opened, notes


def _holds_tensors(d: dict, depth: int = 0) -> bool:
    if depth > 3:
        return False
    return any(isinstance(v, torch.Tensor) or (isinstance(v, dict) and _holds_tensors(v, depth + 1))
               for v in d.values())


def _flatten(d: dict, prefix: str, tensors: dict, values: dict) -> None:
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            tensors[name] = v
        elif isinstance(v, dict) and _holds_tensors(v):
            _flatten(v, f"{name}.", tensors, values)
        else:
            values[name] = v


def json_safe(values: dict) -> dict:
    """The plain values of a file (monodepth2's height/width, a step counter) as JSON-able data."""
    out = {}
    for k, v in values.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = repr(v)[:80]
    return out
