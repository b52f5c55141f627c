"""Transfer protocols: what trains, and at which learning rate.

- `full`: encoder and decoder train; the encoder at `lr * encoder_lr_mult`.
- `frozen`: encoder weights and BatchNorm statistics fixed (eval mode, no gradients, not in the
  optimiser); the decoder trains.
- `linear`: frozen encoder, BatchNorm + 1×1 linear head (the `linear` decoder).
"""

from __future__ import annotations

from bench.errors import UserError
from transfer.model import SegmentationModel

PROTOCOLS = ("full", "frozen", "linear")


def decoder_for(protocol: str, decoder: str) -> str:
    """The linear protocol always uses the linear head; the others use the requested decoder."""
    return "linear" if protocol == "linear" else decoder


def param_groups(model: SegmentationModel, protocol: str, lr: float, encoder_lr_mult: float) -> list[dict]:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; available: {', '.join(PROTOCOLS)}")
    if protocol == "linear" and model.decoder_kind != "linear":
        raise UserError("protocol linear needs decoder linear")
    groups = [{"params": list(model.decoder.parameters()), "lr": lr, "name": "decoder"}]
    if protocol == "full":
        groups.append({"params": list(model.encoder.parameters()), "lr": lr * encoder_lr_mult, "name": "encoder"})
    else:
        model.freeze_encoder()
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups
