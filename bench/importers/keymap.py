"""User key maps (`--key-map FILE`): regex renames for layouts no built-in format knows.

The file is YAML or JSON (YAML reads both): a list of `[pattern, replacement]` pairs, e.g.

    - ['^net\\.backbone\\.(.*)', '\\1']     # strip a prefix: keep the captured rest
    - ['^aux_head\\.', null]                # drop every key that matches

Rules run in order on every tensor name of the file (of each file, for folder formats), after
its wrapper dicts (`state_dict`, `model`, `teacher`, ...) are opened and before the format's own
prefixes and drops: patterns therefore match the names as stored in the file. Each rule is
`re.sub(pattern, replacement, name)` on the name the previous rules left; a replacement of `null`
or `""` drops every name the pattern matches (so to strip a prefix, capture the rest as above
rather than replacing it with "").
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from bench.core.errors import UserError

Rule = tuple[re.Pattern, str | None]


def load_key_map(key_map) -> list[Rule]:
    """Compiled rules from a file path, or from an already parsed list of pairs."""
    where = "key map"
    if isinstance(key_map, (str, Path)):
        path = Path(key_map)
        where = str(path)
        if not path.is_file():
            raise UserError(f"--key-map {path}: file not found")
        try:
            key_map = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"--key-map {path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(key_map, list) or not key_map:
        raise UserError(f"--key-map {where}: expected a non-empty list of [pattern, replacement] pairs")
    rules: list[Rule] = []
    for i, item in enumerate(key_map):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
                and (item[1] is None or isinstance(item[1], str))):
            raise UserError(f"--key-map {where}: entry {i} is {item!r}; expected [pattern, replacement or null]")
        try:
            pattern = re.compile(item[0])
        except re.error as exc:
            raise UserError(f"--key-map {where}: entry {i}: bad pattern {item[0]!r} ({exc})") from None
        rules.append((pattern, item[1] or None))
    return rules


def apply_key_map(state: dict[str, torch.Tensor], rules: list[Rule], source) -> tuple[dict, list[str]]:
    """(renamed state, original names the map dropped)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for name, tensor in state.items():
        new = name
        for pattern, replacement in rules:
            if replacement is None:
                if pattern.search(new):
                    new = None
                    break
            else:
                try:
                    new = pattern.sub(replacement, new)
                except (re.error, IndexError) as exc:
                    raise UserError(f"--key-map: replacement {replacement!r} fails on {new!r} ({exc})") from None
        if new is None:
            dropped.append(name)
            continue
        if new in out:
            raise UserError(f"{source}: --key-map renames both {origin[new]!r} and {name!r} to {new!r}")
        out[new] = tensor
        origin[new] = name
    return out, dropped
