"""Expansion of a manifest into matrix cells: backbones x datasets x protocols x decoders x
train sizes x seeds. Which decoders a protocol pairs with is `transfer.protocols.decoders_for`
(the linear protocol always takes the linear head); what each cell trains with is resolved by
`transfer.api.resolve_cell_config`, not here."""

from __future__ import annotations

from bench.manifest import Manifest
from transfer.api import Cell
from transfer.protocols import decoders_for

__all__ = ["Cell", "expand"]


def expand(manifest: Manifest, methods: dict[str, str] | None = None) -> list[Cell]:
    """`methods` overrides the method label per backbone display name (imported checkpoints
    carry their own). A variant entry's cells carry its label (`Cell.backbone_variant`,
    `Cell.dataset_variant`)."""
    methods = methods or {}
    t = manifest.transfer
    cells: list[Cell] = []
    for b in manifest.backbones:
        for d in manifest.datasets:
            for protocol in t.protocols:
                for decoder in decoders_for(protocol, t.decoders):
                    for n in t.train_sizes:
                        for seed in t.seeds:
                            cells.append(Cell(b.name, methods.get(b.display_name, b.method), b.arch, d.name,
                                              protocol, decoder, n, seed, backbone_variant=b.variant,
                                              dataset_variant=d.variant))
    return list(dict.fromkeys(cells))  # a repeated axis value must not run a cell twice
