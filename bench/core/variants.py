"""Named variants: one backbone or dataset entry of a manifest listed several times with different
settings, each with a `variant` label (docs/manifest.md#variants).

A variant is named `NAME@LABEL` everywhere it is shown or stored (leaderboard rows, plots, cell
ids, `pretrain/NAME@LABEL/`); an entry without a label is just NAME, as it always was. `@` is
not allowed in names or labels, so a display name splits back into its two parts unambiguously.
"""

from __future__ import annotations

SEPARATOR = "@"


def display_name(name: str, variant: str | None) -> str:
    """`NAME@LABEL` for a labelled entry, NAME otherwise."""
    return name if variant is None else f"{name}{SEPARATOR}{variant}"


def cell_display(cell: dict, axis: str) -> str:
    """The display name of a record's `cell` dict along `axis` (`backbone` or `dataset`): its
    name with its `AXIS_variant` label, when the cell has one."""
    return display_name(cell[axis], cell.get(f"{axis}_variant"))


def base_name(display: str) -> str:
    """NAME of a display name `NAME@LABEL` (or of a plain NAME)."""
    return display.split(SEPARATOR, 1)[0]
