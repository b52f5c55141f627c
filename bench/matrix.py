"""Expansion of a manifest into matrix cells: backbones × datasets × protocols × decoders ×
train sizes × seeds. The `linear` protocol always pairs with the linear head, so it contributes
one decoder column (`linear`) whatever the `decoders` list holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.manifest import Manifest


@dataclass(frozen=True)
class Cell:
    backbone: str
    method: str
    arch: str
    dataset: str
    protocol: str
    decoder: str
    train_size: int
    seed: int

    @property
    def id(self) -> str:
        return (f"{self.backbone}__{self.dataset}__{self.protocol}__{self.decoder}"
                f"__n{self.train_size}__s{self.seed}")

    def as_dict(self) -> dict:
        return asdict(self)


def expand(manifest: Manifest, methods: dict[str, str] | None = None) -> list[Cell]:
    """`methods` overrides the method label per backbone (imported checkpoints carry their own)."""
    methods = methods or {}
    t = manifest.transfer
    cells: list[Cell] = []
    for b in manifest.backbones:
        for d in manifest.datasets:
            for protocol in t.protocols:
                decoders = ["linear"] if protocol == "linear" else list(dict.fromkeys(t.decoders))
                for decoder in decoders:
                    for n in t.train_sizes:
                        for seed in t.seeds:
                            cells.append(Cell(b.name, methods.get(b.name, b.method), b.arch, d.name,
                                              protocol, decoder, n, seed))
    return list(dict.fromkeys(cells))  # a repeated axis value must not run a cell twice
