"""A transfer cell's kept weights (`keep_weights`): what it takes to rebuild the cell's model.

- a full cell keeps its fine-tuned encoder and its decoder (tensors `encoder.*` and `decoder.*`);
- a frozen or linear cell keeps its trained decoder or head only (`decoder.*`): its encoder is the
  pre-training checkpoint, bit for bit, named by its sha256 in the metadata and checked on load.

Stored compactly: every floating tensor in half precision -- float16, or bfloat16 for a tensor
holding a finite value beyond float16's range (65504), which float16 would turn into inf --
and read back as float32. Integer tensors (BatchNorm's counters) stay as they are. The file is a
harness checkpoint (bench.core.checkpoint: the same `depth2seg` metadata block, so `bench cka`
reads a full cell's file like any checkpoint) whose metadata adds `stored_precision: half`,
`bfloat16` (the tensors stored that way) and `kept` (what the file holds, the checkpoint's
sha256, the decoder's kind and options, the number of classes).

Half precision halves the file against float32 and moves a weight by at most 2^-11 of its
magnitude (float16; 2^-8 for bfloat16): invisible in a prediction map or a Grad-CAM overlay,
which is what kept weights are for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.core.atomic import atomic_path
from bench.core.checkpoint import (META_KEY, REQUIRED_META, STORED_PRECISION, Checkpoint, as_float32, file_sha256,
                                   load_checkpoint, read_checkpoint_meta)
from bench.core.errors import UserError
from bench.core.version import __version__

FP16_MAX = torch.finfo(torch.float16).max


def half_precision(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the tensors of `state` with floating ones in half precision, the names stored as bfloat16)."""
    out, as_bf16 = {}, []
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if t.is_floating_point():
            finite = t[torch.isfinite(t)]
            if finite.numel() and float(finite.abs().max()) > FP16_MAX:
                t = t.to(torch.bfloat16)
                as_bf16.append(name)
            else:
                t = t.to(torch.float16)
        out[name] = t.contiguous().clone()  # safetensors refuses shared or strided storage
    return out, as_bf16


def save_kept_weights(path, meta: dict, *, decoder_state: dict, encoder_state: dict | None = None,
                      checkpoint_sha256: str | None = None, decoder: dict | None = None) -> Path:
    """Write a cell's kept weights to `path` (atomically). `encoder_state` None: the encoder is the
    checkpoint whose sha256 is `checkpoint_sha256` (frozen and linear cells). `decoder` describes
    the head (kind, options, classes) for whoever rebuilds it."""
    if encoder_state is None and not checkpoint_sha256:
        raise ValueError("kept weights without an encoder must name the checkpoint's sha256")
    tensors, as_bf16 = half_precision({f"decoder.{k}": v for k, v in decoder_state.items()})
    if encoder_state is not None:
        encoder, encoder_bf16 = half_precision({f"encoder.{k}": v for k, v in encoder_state.items()})
        tensors, as_bf16 = {**encoder, **tensors}, encoder_bf16 + as_bf16
    meta = {"harness_version": __version__, **meta, STORED_PRECISION: "half", "bfloat16": sorted(as_bf16),
            "kept": {"encoder": "fine-tuned" if encoder_state is not None else "checkpoint",
                     "checkpoint_sha256": checkpoint_sha256, "decoder": decoder or {}}}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"kept-weights metadata lacks {missing}")
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path


@dataclass
class KeptWeights:
    encoder: dict[str, torch.Tensor] | None  # None: the encoder is the checkpoint's (`checkpoint_sha256`)
    decoder: dict[str, torch.Tensor]
    meta: dict
    path: Path

    @property
    def encoder_is_checkpoint(self) -> bool:
        return self.encoder is None

    @property
    def checkpoint_sha256(self) -> str | None:
        return (self.meta.get("kept") or {}).get("checkpoint_sha256")


def load_kept_weights(path) -> KeptWeights:
    """A cell's kept weights as float32. A file written before weights were kept this way (a full
    cell's float32 encoder alone) loads with an empty decoder."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    if (meta.get("kept") or {}).get("encoder") == "checkpoint":
        with safe_open(str(path), framework="pt") as f:
            tensors = as_float32({k: f.get_tensor(k) for k in f.keys()}, meta)
        decoder = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")}
        return KeptWeights(None, decoder, meta, path)
    ckpt = load_checkpoint(path)
    return KeptWeights(ckpt.encoder, ckpt.decoder or {}, meta, path)


def verified_checkpoint(path, sha256: str | None, *, what: str = "the cell's encoder") -> Checkpoint:
    """The pre-training checkpoint at `path`, loaded only if its sha256 is `sha256`: kept weights
    without an encoder are a decoder trained on exactly that encoder."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        raise UserError(f"{what} is the checkpoint {path} (sha256 {str(sha256)[:12]}...), which is not there any "
                        f"more: it moved or was removed")
    found = file_sha256(path)
    if sha256 and found != sha256:
        raise UserError(f"{what} is the checkpoint {path} with sha256 {sha256[:12]}..., but that file now has "
                        f"sha256 {found[:12]}...: it changed since the cell ran")
    return load_checkpoint(path)


def kept_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes the tensors of `state` take once stored by `save_kept_weights` (tensor data only)."""
    tensors, _ = half_precision(state)
    return sum(t.numel() * t.element_size() for t in tensors.values())
