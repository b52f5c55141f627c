"""Entry point of the transfer stage: a cell and its settings in, one resolved config, one record out.

It mirrors `pretrain/api.py`. Two functions are the way down from the orchestration layer
(`bench run`, `bench transfer`, `bench submit`, the benchmarks):

    config = resolve_cell_config(cell, settings, dataset=..., dataset_root=..., data_id=..., checkpoint=...)
    record = run_cell(config, out_dir)

- `Cell` names one cell of a matrix: backbone x dataset x protocol x decoder x train size x seed.
- `TransferSettings` is how a cell trains: the `transfer:` section of a manifest without its
  matrix axes, or `bench transfer`'s flags. Both build one and hand it here.
- `resolve_cell_config` is the only place a transfer cell's config is assembled: optimiser
  preset layering, decoder options and the contents of files they name, dataset settings, init,
  and the fingerprint. Nothing else builds cell configs.
- `run_cell` runs one cell, as one process or as DDP ranks, and writes `OUT/record.json`.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench.core import results_folder as rf
from bench.core.checkpoint import file_sha256
from bench.core.models.backbones import backbone_spec
from bench.core.models.initialisation import DEFAULT_RANDOM_INIT, effective_random_init
from bench.core.records import fingerprint, read_json
from bench.core.variants import display_name
from transfer.data import dataset_settings
from transfer.decoders import decoder_class, decoder_slug, parse_decoder_options
from transfer.distributed import join_process_group, launched_by_torchrun, rank_and_world, spawn_cell
from transfer.feature_cache import DEFAULT_VIEWS_PER_IMAGE
from transfer.protocols import (LINEAR_DECODER, SWEEPABLE, PresetOverride, decoder_geometry, preset_key_problem,
                                preset_keys, resolve_preset, sweep_candidates)
from transfer.train import train_cell



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
    # The `variant` labels of the manifest entries this cell comes from (bench/core/variants.py);
    # None for an entry without one, which is every cell made before variants existed.
    backbone_variant: str | None = None
    dataset_variant: str | None = None

    @property
    def backbone_key(self) -> str:
        """The backbone's display name, `NAME@LABEL` for a variant."""
        return display_name(self.backbone, self.backbone_variant)

    @property
    def dataset_key(self) -> str:
        """The dataset's display name, `NAME@LABEL` for a variant."""
        return display_name(self.dataset, self.dataset_variant)

    @property
    def id(self) -> str:
        return (f"{self.backbone_key}__{self.dataset_key}__{self.protocol}__{decoder_slug(self.decoder)}"
                f"__n{self.train_size}__s{self.seed}")

    def as_dict(self) -> dict:
        # Unset labels are left out, so that a cell without variants has the dict, and with it the
        # fingerprint, it always had.
        return {k: v for k, v in asdict(self).items() if not (k in VARIANT_KEYS and v is None)}


VARIANT_KEYS = ("backbone_variant", "dataset_variant")


class TransferSettings(BaseModel):
    """How cells train; the same for every cell of a comparison (docs/protocols.md)."""

    model_config = ConfigDict(extra="forbid")
    decoder_options: dict[str, dict] = Field(default_factory=dict)  # decoder name -> its options
    init: Literal["auto", "encoder+decoder", "encoder"] = "auto"
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_every: int = Field(50, ge=1)
    # Cells also save what rebuilds their model (final.safetensors, half precision): full cells
    # their fine-tuned encoder and decoder, frozen and linear cells their decoder or head (the
    # encoder is the checkpoint), for `bench explain` and `bench cka`; the report's CKA is stored
    # at the end of every full cell without it. true, false, or the cells that keep them, keyed
    # as `optimizer` is. A cell that keeps its weights has `keep_weights: true` in its config, as
    # it always had (so no existing cell's fingerprint moves), although it changes only what a
    # cell leaves, not what it computes; one that keeps none has no such key.
    keep_weights: bool | list[str] = False
    # Layers over the built-in presets, keyed PROTOCOL or PROTOCOL/DECODER (docs/protocols.md).
    optimizer: dict[str, PresetOverride] = Field(default_factory=dict)
    feature_cache: bool = True  # frozen and linear cells train on cached encoder features
    feature_cache_views: int = Field(DEFAULT_VIEWS_PER_IMAGE, ge=1)  # per image, for datasets with a random crop
    augment: bool = True  # random crop (where the dataset has one) and horizontal flips
    state_every: int = Field(100, ge=0)  # steps between resumable in-cell states (0: never)
    # Hyper-parameter candidates, keyed like `optimizer`: {KEY: {lr: [...], weight_decay: [...]}}.
    # Every candidate trains; the best final validation mIoU is selected (docs/protocols.md).
    sweep: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    # Where and how, not what (added to a cell's config after fingerprinting; the record says
    # what was used): bench.core.devices.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    num_workers: int = Field(0, ge=0)  # DataLoader processes rendering training views (uncached cells)

    @field_validator("optimizer")
    @classmethod
    def _preset_keys(cls, v: dict) -> dict:
        for key in v:
            if problem := preset_key_problem(key):
                raise ValueError(problem)
        return v

    @field_validator("keep_weights")
    @classmethod
    def _keep_weights_keys(cls, v):
        for key in v if isinstance(v, list) else []:
            if problem := preset_key_problem(key):
                raise ValueError(problem.replace("optimizer preset", "keep_weights"))
        return v

    def keeps_weights(self, protocol: str, decoder: str, dataset: str | None = None) -> bool:
        """Whether a (protocol, decoder[, dataset]) cell keeps its weights: a listed key matches
        the cells an `optimizer` layer of that key would."""
        if isinstance(self.keep_weights, bool):
            return self.keep_weights
        return bool(set(self.keep_weights) & set(preset_keys(protocol, decoder, dataset)))

    @field_validator("sweep")
    @classmethod
    def _sweep_grid(cls, v: dict) -> dict:
        for key, grid in v.items():
            if problem := preset_key_problem(key):
                raise ValueError(problem.replace("optimizer preset", "sweep"))
            unknown = sorted(set(grid) - set(SWEEPABLE))
            if unknown:
                raise ValueError(f"sweep {key!r}: {unknown[0]!r} cannot be swept (sweepable: {', '.join(SWEEPABLE)})")
            for name, values in grid.items():
                if not values:
                    raise ValueError(f"sweep {key!r}: {name} lists no value")
                for value in values:
                    PresetOverride(**{name: value})  # the same bounds as an optimiser layer
        return v

    def preset(self, protocol: str, decoder: str, dataset: str | None = None):
        """The optimiser preset of a (protocol, decoder) cell on `dataset`: built-ins, then these layers."""
        return resolve_preset(protocol, decoder, {k: o.model_dump() for k, o in self.optimizer.items()},
                              dataset=dataset)


def resolve_cell_config(cell: Cell, settings: TransferSettings, *, dataset: dict, dataset_root, data_id: str,
                        checkpoint=None, checkpoint_sha256: str | None = None, processes: int = 1,
                        device: str | None = None, random_init: str = DEFAULT_RANDOM_INIT) -> dict:
    """The resolved, fingerprinted config of one transfer cell.

    `dataset` holds the dataset's geometry as the user wrote it (`name`, and optionally `classes`,
    `train_split`, `eval_split`, `resize`, `crop`, `eval_resize`); `data_id` names the data
    (the generated world's fingerprint, or a real dataset's path); `checkpoint` is a harness
    checkpoint, its sha256 computed here unless given, or None: a random encoder by the
    `random_init` scheme (the encoder's family decides the scheme it effectively gets, and the
    config holds that one).

    The fingerprint covers everything that decides the result -- the cell, the hyper-parameters,
    the decoder's options and the contents of files they name, the data identity and settings
    (splits, resize, crop) and the checkpoint's sha256 -- but no path: a moved results folder stays
    up to date. Paths, `state_every`, `device`, `precision` and `num_workers` are added after
    fingerprinting: they say where, how and how often, not what.
    """
    if checkpoint is not None and checkpoint_sha256 is None:
        checkpoint_sha256 = file_sha256(checkpoint)
    options = parse_decoder_options(cell.decoder, settings.decoder_options.get(cell.decoder))
    geometry = {**dataset}
    for key, value in decoder_geometry(cell.decoder, dataset["name"]).items():  # the recipe's, unless given
        if geometry.get(key, "default") == "default":
            geometry[key] = value
    config = {
        "cell": cell.as_dict(), "data_id": data_id, "dataset": dataset_settings(**geometry),
        "checkpoint_sha256": checkpoint_sha256, "init": settings.init, "steps": settings.steps,
        "batch_size": settings.batch_size, "eval_every": settings.eval_every,
        "optim": settings.preset(cell.protocol, cell.decoder, dataset["name"]).as_config(),
    }
    candidates = sweep_candidates(cell.protocol, cell.decoder, settings.sweep, dataset["name"])
    if candidates:  # each one more layer over `optim`; selected on validation (transfer/train.py)
        config["sweep"] = candidates
    # Optional keys appear only when they say something, so that adding one keeps older
    # fingerprints valid.
    resolved = options.model_dump(mode="json", exclude={"spec"})
    if cell.decoder == LINEAR_DECODER and backbone_spec(cell.arch).family == "vit" and not resolved.get("vit_tokens"):
        # A ViT's linear probe became DINOv2's token head: named, so that ViT linear cells made with
        # the per-level head before it are re-run rather than taken as current.
        resolved = {**resolved, "vit_tokens": "last"}
    if cell.decoder == LINEAR_DECODER and resolved.get("vit_tokens", "levels") == "levels" and "loss_at" not in resolved:
        # The per-level probe sums its levels on the stride-4 grid and trains with the grid loss
        # (transfer/decoders/linear.py); named, so that records of the per-pixel loss on each
        # level's separately upsampled scores, its form before, are re-run.
        resolved = {**resolved, "loss_at": "grid"}
    if resolved:
        config["decoder_options"] = resolved
    content = decoder_class(cell.decoder).content_ids(options)
    if content:
        config["decoder_content"] = content
    if settings.keeps_weights(cell.protocol, cell.decoder, dataset["name"]):
        config["keep_weights"] = True
    if cell.protocol != "full":
        config["feature_cache"] = bool(settings.feature_cache)
        if settings.feature_cache and config["dataset"].get("crop") is not None and settings.feature_cache_views:
            config["feature_cache_views"] = int(settings.feature_cache_views)
    if not settings.augment:
        config["augment"] = False
    if checkpoint is None:  # the random baseline: how it starts decides what it scores
        config["random_init"] = effective_random_init(backbone_spec(cell.arch).family, random_init)
    if processes > 1:  # data-parallel ranks split each batch: BatchNorm sees slices, so it is a setting
        config["processes"] = int(processes)
    config["fingerprint"] = fingerprint(config)
    config["dataset_root"] = str(dataset_root)
    config["checkpoint"] = str(checkpoint) if checkpoint else None
    if getattr(options, "spec", None):
        config["decoder_spec"] = options.spec  # e.g. the resolved MMSeg config file
    config["state_every"] = settings.state_every
    device = device if device not in (None, "auto") else settings.device
    if device != "auto":
        config["device"] = device
    if settings.precision != "auto":
        config["precision"] = settings.precision
    if settings.num_workers:
        config["num_workers"] = settings.num_workers
    return config


def run_cell(config: dict, out_dir, *, progress: bool = True) -> dict:
    """Train and evaluate one cell; its record (also written to `OUT/record.json`).

    With `processes > 1` the cell runs as that many DDP ranks, each coming back through here;
    a cell started by `torchrun` joins the process group its environment describes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processes = int(config.get("processes") or 1)
    if processes > 1 and not launched_by_torchrun():
        spawn_cell(run_cell, config, out_dir, processes, progress)
        record = read_json(out_dir / rf.RECORD)
        if record is None or record.get("fingerprint") != config["fingerprint"]:
            raise RuntimeError(f"the {processes} ranks of the cell ended without writing its record")
        return record
    device = join_process_group() if launched_by_torchrun() else None
    rank, _ = rank_and_world()
    log = functools.partial(rf.append_log, out_dir, rank=rank)  # appended: a resumed cell keeps its history
    try:
        return train_cell(config, out_dir, progress=progress, log=log, device=device)
    except Exception as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        raise
    finally:  # spilled feature and image caches never outlive their cell, failed or not
        for spill in (rf.FEATURE_CACHE, rf.IMAGE_CACHE):
            shutil.rmtree(out_dir / spill / f"rank{rank}", ignore_errors=True)
            with contextlib.suppress(OSError):  # the last rank out removes the folder
                (out_dir / spill).rmdir()
        if device is not None:
            torch.distributed.destroy_process_group()
