"""Segmentation networks: a harness encoder plus a decoder, built from a checkpoint.

Decoders: `monodepth2` (the U-Net of the depth network; its body can be initialised from a
depth checkpoint, with only the output layer fresh) and `linear` (BatchNorm + 1×1 conv over the
encoder's levels at strides 4..32, upsampled to stride 4 and concatenated: a linear probe in the
spirit of DINOv2's multi-layer linear evaluation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.checkpoint import Checkpoint, load_encoder_weights
from bench.errors import UserError
from bench.models.backbones import create_encoder, normalize
from bench.models.unet_decoder import UNetDecoder

DECODERS = ("monodepth2", "linear")
INITS = ("auto", "encoder+decoder", "encoder")


class LinearHead(nn.Module):
    def __init__(self, encoder_channels: list[int], num_classes: int):
        super().__init__()
        self.levels = list(range(1, len(encoder_channels)))  # skip the stride-2 stem level
        width = sum(encoder_channels[i] for i in self.levels)
        self.bn = nn.BatchNorm2d(width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size) -> torch.Tensor:
        base = features[self.levels[0]].shape[-2:]
        x = torch.cat([F.interpolate(features[i], size=base, mode="bilinear", align_corners=False)
                       if features[i].shape[-2:] != base else features[i] for i in self.levels], dim=1)
        return F.interpolate(self.classifier(self.bn(x)), size=size, mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, decoder_kind: str):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_kind = decoder_kind
        self.encoder_frozen = False

    def freeze_encoder(self) -> None:
        """Weights out of autograd and BatchNorm statistics fixed (eval mode) for good."""
        self.encoder_frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = normalize(images_uint8.float() / 255.0, self.encoder.normalization)
        if self.encoder_frozen:
            with torch.no_grad():
                features = self.encoder(x)
        else:
            features = self.encoder(x)
        size = x.shape[-2:]
        if self.decoder_kind == "linear":
            return self.decoder(features, size)
        return self.decoder(features, size=size)[0]


def build_model(arch: str, checkpoint: Checkpoint | None, decoder_kind: str, init: str,
                num_classes: int) -> tuple[SegmentationModel, dict]:
    """The model and a description of how it was initialised (recorded with the run)."""
    if decoder_kind not in DECODERS:
        raise UserError(f"unknown decoder {decoder_kind!r}; available: {', '.join(DECODERS)}")
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; available: {', '.join(INITS)}")
    encoder = create_encoder(arch)
    info = {"requested": init, "effective": "none", "encoder_coverage": None}
    if checkpoint is not None:
        if checkpoint.meta["arch"] != arch:
            raise UserError(f"{checkpoint.path}: checkpoint arch {checkpoint.meta['arch']!r} differs from {arch!r}")
        info["encoder_coverage"] = load_encoder_weights(encoder, checkpoint.encoder, source=str(checkpoint.path))
        encoder.normalization = checkpoint.meta["normalization"]
        info["effective"] = "encoder"

    if decoder_kind == "linear":
        if init == "encoder+decoder":
            raise UserError("init encoder+decoder needs a dense decoder; the linear decoder has no weights to reuse")
        return SegmentationModel(encoder, LinearHead(encoder.channels, num_classes), "linear"), info

    decoder = UNetDecoder(encoder.channels, out_channels=num_classes, scales=(0,))
    saved = checkpoint.meta.get("decoder") if checkpoint is not None else None
    reusable = saved is not None and saved.get("kind") == decoder_kind and checkpoint.decoder
    if init == "encoder+decoder" and not reusable:
        where = checkpoint.path if checkpoint is not None else "random init"
        raise UserError(f"{where}: init encoder+decoder needs {decoder_kind} decoder weights, which this checkpoint lacks; use --init encoder")
    if reusable and init in ("auto", "encoder+decoder"):
        if not decoder.load_body(checkpoint.decoder):  # heads stay fresh: only the last layer is new
            raise UserError(f"{checkpoint.path}: decoder weights do not match the {decoder_kind} decoder layout")
        info["effective"] = "encoder+decoder"
    return SegmentationModel(encoder, decoder, decoder_kind), info
