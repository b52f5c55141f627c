"""`--set KEY.PATH=VALUE`: a manifest edited from the command line, in the manner of
MMSegmentation's `--cfg-options`.

The path is dotted keys into the manifest's mapping; where it meets a list, a part names the
entry whose `name` is that part (`backbones.depth.pretrain.steps`; a variant by its display name,
`backbones.depth@crop256.pretrain.steps`), or its index (`backbones.0.arch`). The value is read as YAML, so `500`, `1e-3`, `true`, `[full, linear]` and
`{a: 1}` are typed. Missing mappings on the way are created; whether the result is a valid
manifest is for the manifest's own validation to say, which names the `--set` of each problem.
"""

from __future__ import annotations

import copy

import yaml

from bench.core.errors import UserError
from bench.core.variants import display_name


def parse_set(text: str) -> tuple[list[str], object]:
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise UserError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. transfer.steps=500")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {text!r}: the value is not valid YAML") from None
    return [p.strip() for p in parts], parsed


def apply_sets(raw: dict, sets: list[str]) -> tuple[dict, dict[str, tuple]]:
    """A copy of `raw` with every `--set` applied in order, and each one's location in the
    manifest (list entries by index, as validation errors name them)."""
    raw = copy.deepcopy(raw)
    where: dict[str, tuple] = {}
    for text in sets:
        parts, value = parse_set(text)
        node, loc = raw, []
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            key = _step(node, part, text, loc)
            loc.append(key)
            if last:
                node[key] = value
            elif isinstance(node, dict) and node.get(key) is None:
                node[key] = {}  # a section the file leaves to its defaults
                node = node[key]
            else:
                node = node[key]
        where[text] = tuple(loc)
    return raw, where


def _entry_name(entry: dict) -> str:
    """A list entry's display name: NAME, or NAME@LABEL for a variant (bench/core/variants.py)."""
    return display_name(str(entry["name"]), None if entry.get("variant") is None else str(entry["variant"]))


def _step(node, part: str, text: str, loc: list):
    """The key (a mapping's) or index (a list's) that `part` names in `node`."""
    at = ".".join(str(p) for p in loc) or "the manifest"
    if isinstance(node, dict):
        return part
    if isinstance(node, list):
        if part.isdigit() and int(part) < len(node):
            return int(part)
        named = {i: _entry_name(e) for i, e in enumerate(node) if isinstance(e, dict) and "name" in e}
        exact = [i for i, name in named.items() if name == part]  # NAME, or a variant's NAME@LABEL
        if exact:
            return exact[0]
        variants = [name for i, name in named.items() if node[i].get("name") == part]
        if variants:
            raise UserError(f"--set {text}: {at} has several variants named {part!r}; name one: {', '.join(variants)}")
        raise UserError(f"--set {text}: {at} has no entry named {part!r}"
                        + (f" (entries: {', '.join(named.values())})" if named else ""))
    raise UserError(f"--set {text}: {at} is a value ({node!r}), not a section")
