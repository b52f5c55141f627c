"""Expansion of a manifest into matrix cells: backbones x datasets x protocols x decoders x
train sizes x seeds. A backbone pre-trained on one generated world meets only the datasets of that
world, unless `transfer.cross_world` (docs/manifest.md#worlds). Which decoders a protocol pairs with is `transfer.protocols.decoders_for`
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
            if not (t.cross_world or _same_world(manifest, b, d)):
                continue
            for protocol in t.protocols:
                for decoder in decoders_for(protocol, t.decoders):
                    for n in t.train_sizes:
                        for seed in t.seeds:
                            cells.append(Cell(b.name, methods.get(b.display_name, b.method), b.arch, d.name,
                                              protocol, decoder, n, seed, backbone_variant=b.variant,
                                              dataset_variant=d.variant))
    return list(dict.fromkeys(cells))  # a repeated axis value must not run a cell twice


def _same_world(manifest: Manifest, backbone, dataset) -> bool:
    """Whether a backbone and a dataset may meet in a world study: unless both are of generated
    worlds, and different ones. A backbone not pre-trained on a world (random, imported, real
    data) meets every dataset."""
    pre, data = manifest.backbone_world(backbone), manifest.dataset_world(dataset)
    return pre is None or data is None or pre == data
