"""Expansion of a manifest into matrix cells: backbones × datasets × protocols × decoders ×
train sizes × seeds. The `linear` protocol always pairs with the linear head, so it contributes
one decoder column (`linear`) whatever the `decoders` list holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.manifest import Manifest
from bench.core.records import fingerprint
from transfer.decoders import decoder_class, decoder_slug, parse_decoder_options


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
        return (f"{self.backbone}__{self.dataset}__{self.protocol}__{decoder_slug(self.decoder)}"
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


def cell_config(cell: Cell, *, data_id: str, dataset: dict, dataset_root, checkpoint, checkpoint_sha256: str | None,
                init: str, steps: int, batch_size: int, eval_every: int, optim: dict, decoder_options: dict | None = None,
                keep_weights: bool = False, feature_cache: bool = True, feature_cache_views: int | None = None,
                augment: bool = True, processes: int = 1) -> dict:
    """The resolved config of one transfer cell, as `bench run` and `bench transfer` both build it.

    The fingerprint covers everything that decides the result -- the cell, the hyper-parameters,
    the decoder's options and the contents of files they name, the data identity and settings
    (splits, resize, crop) and the checkpoint's sha256 -- but no path: a moved results folder stays
    up to date. Paths are added after fingerprinting, for the trainer to find its inputs.
    """
    options = parse_decoder_options(cell.decoder, decoder_options)
    config = {
        "cell": cell.as_dict(), "data_id": data_id, "dataset": dataset, "checkpoint_sha256": checkpoint_sha256, "init": init,
        "steps": steps, "batch_size": batch_size, "eval_every": eval_every, "optim": optim,
    }
    # Optional keys appear only when they say something, so that adding one keeps older
    # fingerprints valid.
    resolved = options.model_dump(mode="json", exclude={"spec"})
    if resolved:
        config["decoder_options"] = resolved
    content = decoder_class(cell.decoder).content_ids(options)
    if content:
        config["decoder_content"] = content
    if keep_weights:
        config["keep_weights"] = True
    if cell.protocol != "full":
        config["feature_cache"] = bool(feature_cache)
        if feature_cache and dataset.get("crop") is not None and feature_cache_views:
            config["feature_cache_views"] = int(feature_cache_views)
    if not augment:
        config["augment"] = False
    if processes > 1:  # data-parallel ranks split each batch: BatchNorm sees slices, so it is a setting
        config["processes"] = int(processes)
    config["fingerprint"] = fingerprint(config)
    config["dataset_root"] = str(dataset_root)
    config["checkpoint"] = str(checkpoint) if checkpoint else None
    if getattr(options, "spec", None):
        config["decoder_spec"] = options.spec  # e.g. the resolved MMSeg config file
    return config
