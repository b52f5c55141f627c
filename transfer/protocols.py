"""Transfer protocols (what trains) and their optimiser presets (how).

- `full`: encoder and decoder train; the encoder at `lr * encoder_lr_mult`.
- `frozen`: encoder weights and BatchNorm statistics fixed (eval mode, no gradients, not in the
  optimiser); the decoder trains.
- `linear`: frozen encoder, BatchNorm + 1×1 linear head (the `linear` decoder).

Every preset is a warm-up (linear, from lr/warmup) followed by a poly decay to 0. Presets are
looked up per protocol, then per `protocol/decoder`, each layer overriding the fields it names;
a manifest's `transfer.optimizer` adds its own layers on top (docs/protocols.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from bench.core.errors import UserError
from transfer.model import SegmentationModel

# The protocols, in the order tables and plots show them. Defined here only: the manifest, the
# CLI, the matrix and the plots read them from here.
PROTOCOLS = ("full", "frozen", "linear")
Protocol = Literal["full", "frozen", "linear"]
LINEAR_DECODER = "linear"  # the head of the linear protocol, whatever decoders a matrix lists
PROTOCOL_DESCRIPTIONS = {
    "full": "encoder and decoder train (the encoder at lr x encoder_lr_mult)",
    "frozen": "encoder weights and BatchNorm statistics fixed; the decoder trains",
    "linear": "frozen encoder and a BatchNorm + 1x1 linear head (the `linear` decoder)",
}


class OptimizerPreset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the decoder")
    encoder_lr_mult: float = Field(1.0, ge=0, description="encoder lr = lr x this (protocol full)")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up steps (default: 5% of the steps)")
    poly_power: float = Field(0.9, ge=0, description="poly decay exponent after the warm-up")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient's global L2 norm to this")
    decay_norms_and_embeddings: bool = Field(True, description="false: no weight decay on normalisation layers "
                                             "and query/level embeddings (MMSegmentation's Mask2Former)")

    def as_config(self) -> dict:
        """The preset as configs and records hold it: fields added after v0.1.0 only when they are
        not their default, so presets that do not use them keep their fingerprints."""
        dumped = self.model_dump()
        for name in ("grad_clip", "decay_norms_and_embeddings"):
            if dumped[name] == OptimizerPreset.model_fields[name].default:
                del dumped[name]
        return dumped


class PresetOverride(BaseModel):
    """A layer over a preset: only the fields it names change."""
    model_config = ConfigDict(extra="forbid")
    optimizer: Literal["adamw", "sgd"] | None = None
    lr: float | None = Field(None, gt=0)
    encoder_lr_mult: float | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    poly_power: float | None = Field(None, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    decay_norms_and_embeddings: bool | None = None


# Mask2Former as MMSegmentation's configs train it (Cheng et al. 2022): AdamW, lr 1e-4, weight
# decay 0.05 except on normalisation layers and the query/level embeddings, the backbone at 0.1x,
# gradients clipped to a global L2 norm of 0.01, poly 0.9 decay.
_MASK2FORMER = {"optimizer": "adamw", "lr": 1e-4, "encoder_lr_mult": 0.1, "weight_decay": 0.05,
                "grad_clip": 0.01, "decay_norms_and_embeddings": False}
# Depth Anything's segmentation transfer (supplementary, "fine-tuning to semantic segmentation"):
# MMSegmentation's Mask2Former with the encoder at 3e-6 and the decoder 10x larger, on ADE20K and
# Cityscapes; "other training configurations are the same as the original codebase".
_DEPTH_ANYTHING = {"lr": 3e-5, "encoder_lr_mult": 0.1}

# The built-in layers. AdamW for the U-Net and linear heads (what fits few-shot budgets best in
# our runs); DeepLabV3's own recipe (SGD, momentum 0.9, poly 0.9; Chen et al. 2017); Mask2Former's
# above. A key may end in `@DATASET`: that layer applies to cells on that dataset only.
BUILTIN_PRESETS: dict[str, dict] = {
    "full": {"optimizer": "adamw", "lr": 1e-3, "encoder_lr_mult": 1.0, "weight_decay": 1e-4},
    "frozen": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
    "linear": {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0},
    "full/deeplabv3": {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-4},
    "frozen/deeplabv3": {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-4},
    "full/mask2former": _MASK2FORMER,
    "frozen/mask2former": _MASK2FORMER,
    "full/mask2former@ade20k": _DEPTH_ANYTHING,
    "full/mask2former@cityscapes": _DEPTH_ANYTHING,
    "frozen/mask2former@ade20k": _DEPTH_ANYTHING,
    "frozen/mask2former@cityscapes": _DEPTH_ANYTHING,
}

# Data geometry a decoder's recipe brings to a dataset, over the dataset's defaults (a value the
# user gives wins): Depth Anything trains Mask2Former on 896x896 crops of ADE20K and Cityscapes
# (MMSegmentation's 896 pipelines: ADE20K resized to a short side of 896 first).
DECODER_GEOMETRY: dict[tuple[str, str], dict] = {
    ("mask2former", "ade20k"): {"resize": 896, "crop": "896x896", "eval_resize": 896},
    ("mask2former", "cityscapes"): {"crop": "896x896"},
}

# Parameters MMSegmentation's Mask2Former trains without weight decay, by their Hugging Face
# names (MMSeg's query_embed, query_feat, level_embed); normalisation layers are found by type.
NO_DECAY_NAMES = ("queries_embedder", "queries_features", "level_embed")


def preset_key_problem(key: str) -> str | None:
    """Why `key` is not `PROTOCOL`, `PROTOCOL/DECODER`, optionally `@DATASET` (None when it is)."""
    key, at, dataset = key.partition("@")
    if at and not dataset:
        return f"optimizer preset {key + at!r}: nothing after '@'"
    protocol, _, decoder = key.partition("/")
    if protocol not in PROTOCOLS:
        return f"optimizer preset {key!r}: unknown protocol {protocol!r} (available: {', '.join(PROTOCOLS)})"
    if "/" in key and not decoder:
        return f"optimizer preset {key!r}: nothing after '/'"
    return None


def resolve_preset(protocol: str, decoder: str, *layers: dict[str, dict], dataset: str | None = None
                   ) -> OptimizerPreset:
    """The preset of a (protocol, decoder) cell on `dataset`: built-ins, then each layer, protocol
    before protocol/decoder before their `@dataset` forms. A prefix decoder (`mmseg:cfg.py`)
    matches `protocol/mmseg`."""
    fields: dict = {}
    for source in (BUILTIN_PRESETS, *layers):
        for key in preset_keys(protocol, decoder, dataset):
            entry = source.get(key)
            if entry:
                fields.update({k: v for k, v in dict(entry).items() if v is not None})
    return OptimizerPreset(**fields)


# What a sweep may vary: the numeric fields of a preset (each candidate is one more layer on it).
SWEEPABLE = ("lr", "encoder_lr_mult", "weight_decay", "momentum", "warmup_steps", "poly_power")


def preset_keys(protocol: str, decoder: str, dataset: str | None = None) -> list[str]:
    """The keys a (protocol, decoder[, dataset]) cell reads its layers from, least specific first.
    A prefix decoder (`mmseg:cfg.py`) matches `protocol/mmseg`; `KEY@DATASET` follows `KEY`."""
    family = decoder.split(":", 1)[0]
    keys = list(dict.fromkeys((protocol, f"{protocol}/{family}", f"{protocol}/{decoder}")))
    return keys + [f"{k}@{dataset}" for k in keys] if dataset else keys


def decoder_geometry(decoder: str, dataset: str) -> dict:
    """The geometry a decoder's recipe sets on a dataset (DECODER_GEOMETRY), or {}."""
    return dict(DECODER_GEOMETRY.get((decoder.split(":", 1)[0], dataset), {}))


def sweep_candidates(protocol: str, decoder: str, sweeps: dict[str, dict[str, list]], dataset: str | None = None
                     ) -> list[dict]:
    """The candidates of a cell's sweep: the grid of its most specific sweep entry (PROTOCOL or
    PROTOCOL/DECODER, as optimiser layers are keyed), every combination of the listed values, in
    the order the lists give; [] when no entry applies or it has a single candidate."""
    import itertools

    grid = next((sweeps[k] for k in reversed(preset_keys(protocol, decoder, dataset)) if sweeps.get(k)), None)
    if not grid:
        return []
    fields = [f for f in SWEEPABLE if grid.get(f)]
    candidates = [dict(zip(fields, values)) for values in itertools.product(*(grid[f] for f in fields))]
    return candidates if len(candidates) > 1 else []


def decoder_for(protocol: str, decoder: str) -> str:
    """The linear protocol always uses the linear head; the others use the requested decoder."""
    return LINEAR_DECODER if protocol == "linear" else decoder


def decoders_for(protocol: str, decoders: list[str]) -> list[str]:
    """The decoder column(s) a protocol contributes to a matrix listing `decoders`: the linear
    protocol one (`linear`), the others each listed decoder once, in order."""
    return list(dict.fromkeys(decoder_for(protocol, d) for d in decoders))


def param_groups(model: SegmentationModel, protocol: str, lr: float, encoder_lr_mult: float,
                 decay_norms_and_embeddings: bool = True) -> list[dict]:
    """Optimiser groups: the decoder at `lr`, the encoder (protocol full) at `lr * encoder_lr_mult`;
    with `decay_norms_and_embeddings` false, each is split in two and the part holding
    normalisation-layer and query/level-embedding parameters gets no weight decay."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; available: {', '.join(PROTOCOLS)}")
    if protocol == "linear" and model.decoder_kind != LINEAR_DECODER:
        raise UserError("protocol linear needs decoder linear")
    parts = [("decoder", model.decoder, lr)]
    if protocol == "full":
        parts.append(("encoder", model.encoder, lr * encoder_lr_mult))
    else:
        model.freeze_encoder()
    groups = []
    for name, module, group_lr in parts:
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        exempt = set() if decay_norms_and_embeddings else _no_decay(module)
        groups.append({"params": [p for n, p in params if n not in exempt], "lr": group_lr, "name": name})
        if exempt:
            groups.append({"params": [p for n, p in params if n in exempt], "lr": group_lr, "weight_decay": 0.0,
                           "name": f"{name} (no decay)"})
    for g in groups:
        g["base_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def _no_decay(module: torch.nn.Module) -> set[str]:
    """Names of the parameters of normalisation layers and of query/level embeddings."""
    norms = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    out = set()
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(mod, norms) or any(key in full for key in NO_DECAY_NAMES):
                out.add(full)
    return out


def build_optimizer(groups: list[dict], preset: OptimizerPreset, update: str | None = None) -> torch.optim.Optimizer:
    """`update`: "fused" (one kernel for every tensor's whole update), "foreach" (the multi-tensor
    update, a kernel per operation) or None (the device's default: on a CPU a loop over tensors,
    whose fixed cost is what a linear head's step of a few small tensors costs)."""
    kind = {} if update is None else {update: True}
    if preset.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=preset.momentum, weight_decay=preset.weight_decay, **kind)
    return torch.optim.AdamW(groups, weight_decay=preset.weight_decay, **kind)


def lr_factor(step: int, steps: int, warmup: int, power: float) -> float:
    """Linear warm-up to 1 over `warmup` steps, then poly decay `(1 - t)^power` to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return (1.0 - (step - warmup) / max(1, steps - warmup)) ** power
