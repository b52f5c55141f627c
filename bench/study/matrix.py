"""Expansion of a manifest into matrix cells: backbones x datasets x protocols x decoders x
train sizes x seeds. A backbone pre-trained on one generated world meets only the datasets of that
world, unless `transfer.cross_world` (docs/manifest.md#worlds). Which decoders a protocol pairs with is `transfer.protocols.decoders_for`
(the linear protocol always takes the linear head); what each cell trains with is resolved by
`transfer.api.resolve_cell_config`, not here."""

from __future__ import annotations

from bench.study.manifest import Manifest
from transfer.api import Cell
from transfer.protocols import decoders_for

__all__ = ["Cell", "expand"]


def expand(manifest: Manifest, methods: dict[str, str] | None = None) -> list[Cell]:
    """`methods` overrides the method label per backbone display name (imported checkpoints
    carry their own). A variant entry's cells carry its label (`Cell.backbone_variant`,
    `Cell.dataset_variant`)."""
    methods = methods or {}
    t = manifest.transfer
    # Which world each entry reads (None: none), once per entry rather than once per pair.
    pre_world = [manifest.backbone_world(b) for b in manifest.backbones]
    data_world = [manifest.dataset_world(d) for d in manifest.datasets]
    cells: list[Cell] = []
    for b, b_world in zip(manifest.backbones, pre_world):
        for d, d_world in zip(manifest.datasets, data_world):
            if not (t.cross_world or _same_world(b_world, d_world)):
                continue
            for protocol in t.protocols:
                for decoder in decoders_for(protocol, t.decoders):
                    for n in t.train_sizes:
                        for seed in t.seeds:
                            cells.append(Cell(b.name, methods.get(b.display_name, b.method), b.arch, d.name,
                                              protocol, decoder, n, seed, backbone_variant=b.variant,
                                              dataset_variant=d.variant))
    return list(dict.fromkeys(cells))  # a repeated axis value must not run a cell twice


def _same_world(pre: str | None, data: str | None) -> bool:
    """Whether a backbone pre-trained on world `pre` and a dataset of world `data` (ids; None: no
    generated world) may meet in a world study: unless both are generated worlds, and different
    ones. A backbone not pre-trained on a world (random, imported, real data) meets every dataset."""
    return pre is None or data is None or pre == data
